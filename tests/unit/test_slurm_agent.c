/* test_slurm_agent.c - the Slurm launcher's commands as agent requests
 * (includes slurm_agent.c): each maps to one line of the agent's protocol,
 * and what the protocol cannot carry stays a plain command. */
#include "../../src/slurm_agent.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static void expect_request(char *const argv[], const char *want, bool want_submit)
{
	bool submit = !want_submit;
	char *line = request_for(argv, &submit);

	if (want == NULL) {
		assert_null(line);
		return;
	}
	assert_non_null(line);
	assert_string_equal(line, want);
	assert_true(submit == want_submit);
	free(line);
}

static void test_sbatch_is_a_submit(void **state)
{
	char *argv[] = {"sbatch", "--parsable", "--job-name=sg:gw:llm:0", "--export=ALL,PORT=8000",
			"--chdir=/a b", "--gres=gpu:1", "/jobs/llm's job.sh", "8000", NULL};
	char *bare[] = {"sbatch", "--parsable", "--job-name=sg:gw:llm:1", "--export=ALL,PORT=8001",
			"/jobs/llm.sh", "8001", NULL};

	(void)state;
	expect_request(argv, "submit\tsg:gw:llm:0\t8000\t/jobs/llm's job.sh\t--chdir=/a b\t--gres=gpu:1",
		       true);
	expect_request(bare, "submit\tsg:gw:llm:1\t8001\t/jobs/llm.sh", true);
}

static void test_other_commands(void **state)
{
	char *scancel[] = {"scancel", "42", NULL};
	char *squeue[] = {"squeue", "--me", "-h", "-t", "all", "-o", "%i|%j", NULL};
	char *show[] = {"scontrol", "-o", "show", "job", "42", NULL};
	char *sacct[] = {"sacct", "-n", "-X", "-P", "-j", "42", "-o", "State,ExitCode", NULL};
	char *sinfo[] = {"sinfo", "-h", "-N", "-o", "%N|%o", NULL};

	(void)state;
	expect_request(scancel, "cancel\t42", false);
	expect_request(squeue, "jobs", false);
	expect_request(show, "show\t42", false);
	expect_request(sacct, "acct\t42", false);
	expect_request(sinfo, "nodes", false);
}

static void test_what_the_protocol_cannot_carry_stays_plain(void **state)
{
	char *tab[] = {"sbatch", "--parsable", "--job-name=sg:gw:llm:0", "--export=ALL,PORT=8000",
		       "--comment=a\tb", "/jobs/llm.sh", "8000", NULL};
	char *nl[] = {"scancel", "4\n2", NULL};
	char *empty[] = {"scancel", "", NULL};
	char *other[] = {"sh", "-c", "id", NULL};
	char *odd[] = {"sbatch", "--wrap=id", NULL};
	char *none[] = {NULL};

	(void)state;
	expect_request(tab, NULL, true);
	expect_request(nl, NULL, false);
	expect_request(empty, NULL, false);
	expect_request(other, NULL, false);
	expect_request(odd, NULL, false);
	expect_request(none, NULL, false);
}

/* Does some error line contain NEEDLE? */
static bool has_error(char **errs, const char *needle)
{
	for (char **e = errs; e && *e; e++)
		if (strstr(*e, needle))
			return true;
	return false;
}

/* slurm_agent is validated with everything it puts on the protocol */
static void test_config_slurm_agent(void **state)
{
	char path[] = "/tmp/sg-unit-agent-XXXXXX";
	char **errs = NULL;
	struct config *c;
	FILE *f;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fputs("{\"Services\": ["
	      "{\"name\": \"a\", \"route_name\": \"a\", \"bash_file\": \"/jobs/a.sh\", \"remote_port\": 5000,"
	      " \"remote_host\": \"login\", \"slurm_agent\": \"bin/slurmgate-agent\","
	      " \"sbatch_args\": [\"--gres=gpu:1\"]},"
	      "{\"name\": \"b\", \"route_name\": \"b\", \"bash_file\": \"rel.sh\", \"remote_port\": 5010,"
	      " \"remote_host\": \"login\", \"slurm_agent\": \"other-agent\","
	      " \"sbatch_args\": [\"-w\", \"node2\", \"--comment=a\\tb\", \"--chdir=/x StdErr=/y\"]},"
	      "{\"name\": \"c\", \"route_name\": \"c\", \"bash_file\": \"/bin/true\", \"remote_port\": 5020,"
	      " \"launcher\": \"local\", \"slurm_agent\": \"\"}]}",
	      f);
	fclose(f);
	c = config_load(path, &errs);
	unlink(path);
	assert_null(c);
	assert_true(has_error(errs, "Services[1].bash_file: with slurm_agent, must be an absolute path"));
	assert_true(has_error(errs, "Services[1].sbatch_args: with slurm_agent, each must be one option "
				    "word (\"--option=value\"), without spaces or control characters: "
				    "\"node2\""));
	assert_true(has_error(errs, "without spaces or control characters: \"--comment=a\\x09b\""));
	assert_true(has_error(errs, "without spaces or control characters: \"--chdir=/x StdErr=/y\""));
	assert_true(has_error(errs, "Services[1].slurm_agent: Services[0] has the same login node and "
				    "must name the same agent"));
	assert_true(has_error(errs, "Services[2].slurm_agent: only for launcher \"slurm\""));
	assert_true(has_error(errs, "Services[2].slurm_agent: must be a path on the login node"));
	assert_false(has_error(errs, "Services[0]."));
	config_free_errors(errs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sbatch_is_a_submit),
		cmocka_unit_test(test_other_commands),
		cmocka_unit_test(test_what_the_protocol_cannot_carry_stays_plain),
		cmocka_unit_test(test_config_slurm_agent),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

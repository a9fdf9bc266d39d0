/* test_config.c - config parsing and validation (includes config.c for its statics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../src/config.c"

static char dir[] = "/tmp/sg-unit-XXXXXX";

/* Write TEXT to a file in the test folder and load it. */
static struct config *load_text(const char *text, char ***errs)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof path, "%s/c.json", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return config_load(path, errs);
}

/* Does some error line contain NEEDLE? */
static bool has_error(char **errs, const char *needle)
{
	for (char **e = errs; e && *e; e++)
		if (strstr(*e, needle))
			return true;
	return false;
}

static size_t n_errors(char **errs)
{
	size_t n = 0;
	for (char **e = errs; e && *e; e++)
		n++;
	return n;
}

static int setup(void **state)
{
	char path[300];
	FILE *f;

	(void)state;
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof path, "%s/run.sh", dir);
	f = fopen(path, "w");
	fputs("#!/bin/sh\nexit 0\n", f);
	fclose(f);
	chmod(path, 0755);
	return 0;
}

static int teardown(void **state)
{
	char cmd[300];

	(void)state;
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_seed_schema_loads_with_defaults(void **state)
{
	char **errs = NULL;
	struct config *c = load_text(
		"{\"nginxFile\": \"/app/nginx.conf\", \"Services\": [{"
		"\"name\": \"LLM\", \"ssh_username\": \"u\", \"ssh_key_file\": \"/k\","
		"\"remote_host\": \"login1\", \"remote_port\": 8083, \"local_host\": \"localhost\","
		"\"local_port\": 8083, \"bash_file\": \"/nfs/run.sh\", \"check_health_path\": \"health\","
		"\"timeout\": 120, \"route_name\": \"llm_service\", \"api_paths\": [\"/\", \"/generate\"]}]}",
		&errs);

	(void)state;
	assert_null(errs);
	assert_non_null(c);
	assert_int_equal(c->n_services, 1);
	assert_string_equal(c->listen_host, "127.0.0.1");
	assert_int_equal(c->listen_port, 8090);
	assert_null(c->admin_token);
	assert_int_equal(c->max_body_size, 64LL << 20);
	assert_string_equal(c->services[0].launcher->name, "slurm");
	assert_int_equal(c->services[0].start_timeout, 900);
	assert_true(c->services[0].hold);
	assert_string_equal(c->services[0].check_health_path, "/health");
	assert_string_equal(c->services[0].local_host, "127.0.0.1");
	assert_string_equal(c->services[0].bash_file, "/nfs/run.sh");
	assert_string_equal(c->services[0].api_paths[1], "/generate");
	assert_null(c->services[0].api_paths[2]);
	config_free(c);
}

static void test_local_bash_file_resolves_against_config_folder(void **state)
{
	char **errs = NULL, want[300];
	struct config *c = load_text("{\"listen\": \"127.0.0.1:9000\", \"Services\": [{\"name\": \"a\","
				     "\"route_name\": \"a\", \"launcher\": \"local\", \"bash_file\": \"run.sh\","
				     "\"remote_port\": 9001}]}",
				     &errs);

	(void)state;
	assert_non_null(c);
	snprintf(want, sizeof want, "%s/run.sh", dir);
	assert_string_equal(c->services[0].bash_file, want);
	assert_int_equal(c->services[0].local_port, 9001);   /* defaults to remote_port */
	assert_int_equal(c->listen_port, 9000);
	config_free(c);
}

static void test_bad_timeout_names_the_field(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"Services\": [{\"name\": \"a\", \"route_name\": \"a\","
				     "\"bash_file\": \"/x\", \"remote_port\": 1, \"timeout\": -5}]}",
				     &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "Services[0].timeout: must be a positive integer"));
	config_free_errors(errs);
}

/* A config lives while anything holds a reference (the gateway's context,
 * a service): the last config_unref frees it; a failed load leaves none. */
static void test_config_freed_with_last_reference(void **state)
{
	char **errs = NULL;
	size_t before = config_live();
	struct config *c = load_text("{\"Services\": []}", &errs), *held;

	(void)state;
	assert_non_null(c);
	assert_int_equal(config_live(), before + 1);
	held = config_ref(c);   /* a service's */
	config_unref(c);        /* the context moves to a newer config */
	assert_int_equal(config_live(), before + 1);
	assert_non_null(held->path);   /* still there (ASan: not freed) */
	config_unref(held);     /* the retired service is freed */
	assert_int_equal(config_live(), before);
	assert_null(load_text("{\"Services\": 1}", &errs));
	assert_int_equal(config_live(), before);
	config_free_errors(errs);
}

/* The launcher is looked up in the registry (launcher.c): an unknown name,
 * or a value that is no name, is refused with every known name listed. */
static void test_unknown_launcher_refused_with_known_names(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"Services\": [{\"name\": \"a\", \"route_name\": \"a\","
				     "\"bash_file\": \"/x\", \"remote_port\": 1, \"launcher\": \"slurmrestd\"},"
				     "{\"name\": \"b\", \"route_name\": \"b\", \"bash_file\": \"/x\","
				     "\"remote_port\": 5, \"launcher\": 7}]}",
				     &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "Services[0].launcher: unknown launcher \"slurmrestd\"; the known "
				    "launchers are \"local\", \"slurm\""));
	assert_true(has_error(errs, "Services[1].launcher: must be a string naming a launcher: one of "
				    "\"local\", \"slurm\""));
	assert_int_equal(n_errors(errs), 2);
	config_free_errors(errs);
}

static void test_every_error_in_one_pass(void **state)
{
	char **errs = NULL;
	struct config *c = load_text(
		"{\"bogus\": 1, \"listen\": \"nope\", \"Services\": ["
		"{\"name\": \"a\", \"route_name\": \"info\", \"bash_file\": \"/x\", \"remote_port\": 70000,"
		" \"colour\": \"red\", \"hold\": \"yes\", \"launcher\": \"k8s\"},"
		"{\"route_name\": \"b c\", \"bash_file\": 3, \"remote_port\": 5, \"api_paths\": [\"gen\"]}]}",
		&errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "$.bogus: unknown key"));
	assert_true(has_error(errs, "$.listen: must be \"HOST:PORT\""));
	assert_true(has_error(errs, "Services[0].route_name: \"info\" is reserved"));
	assert_true(has_error(errs, "Services[0].remote_port: must be a port number"));
	assert_true(has_error(errs, "Services[0].colour: unknown key"));
	assert_true(has_error(errs, "Services[0].hold: must be true or false"));
	assert_true(has_error(errs, "Services[0].launcher: unknown launcher \"k8s\""));
	assert_true(has_error(errs, "Services[1].name: required"));
	assert_true(has_error(errs, "Services[1].route_name: must be letters"));
	assert_true(has_error(errs, "Services[1].bash_file: must be a string"));
	assert_true(has_error(errs, "Services[1].api_paths: \"gen\" must start with '/'"));
	assert_true(n_errors(errs) >= 11);
	config_free_errors(errs);
}

static void test_duplicates_are_rejected(void **state)
{
	char **errs = NULL;
	struct config *c = load_text(
		"{\"Services\": [{\"name\": \"a\", \"route_name\": \"r\", \"bash_file\": \"/x\", \"remote_port\": 5},"
		"{\"name\": \"a\", \"route_name\": \"r\", \"bash_file\": \"/x\", \"remote_port\": 5}]}",
		&errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "Services[1].name: \"a\" is also Services[0].name"));
	assert_true(has_error(errs, "Services[1].route_name: \"r\" is also Services[0].route_name"));
	assert_true(has_error(errs, "Services[1].local_port: ports 5-6 overlap Services[0] (5-6)"));
	config_free_errors(errs);
}

static void test_invalid_json_gives_line(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\n\"Services\": [\n,]}", &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "c.json:3:"));
	config_free_errors(errs);
}

static void test_duplicate_key_and_missing_services(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"listen\": \"127.0.0.1:1\", \"listen\": \"127.0.0.1:2\"}", &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "duplicate"));
	config_free_errors(errs);
	c = load_text("{}", &errs);
	assert_null(c);
	assert_true(has_error(errs, "$.Services: required"));
	config_free_errors(errs);
}

static void test_local_bash_file_must_be_executable(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"Services\": [{\"name\": \"a\", \"route_name\": \"a\","
				     "\"launcher\": \"local\", \"bash_file\": \"missing.sh\", \"remote_port\": 5}]}",
				     &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "Services[0].bash_file:"));
	assert_true(has_error(errs, "No such file"));
	config_free_errors(errs);
}


/* issue 12, problem 4: what -t passed and the start then refused */
static void test_listen_host_name_is_resolved_like_the_start_does(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"listen\": \"localhost:8090\", \"Services\": []}", &errs);

	(void)state;
	assert_null(errs);
	assert_non_null(c);
	assert_string_equal(c->listen_host, "127.0.0.1");
	assert_int_equal(c->listen_port, 8090);
	config_free(c);
	c = load_text("{\"listen\": \"no-such-host.invalid:8090\", \"Services\": []}", &errs);
	assert_null(c);
	assert_true(has_error(errs, "$.listen: cannot resolve \"no-such-host.invalid\""));
	config_free_errors(errs);
}

static void test_listen_port_zero_is_rejected(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"listen\": \"127.0.0.1:0\", \"Services\": []}", &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "$.listen: port must be 1-65535, got 0"));
	config_free_errors(errs);
}

static void test_bash_file_directory_is_rejected(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"Services\": [{\"name\": \"a\", \"route_name\": \"a\","
				     "\"launcher\": \"local\", \"bash_file\": \".\", \"remote_port\": 5}]}",
				     &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "Services[0].bash_file:"));
	assert_true(has_error(errs, "is a directory"));
	config_free_errors(errs);
}

static void test_missing_ssh_key_file_is_a_problem(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"Services\": [{\"name\": \"a\", \"route_name\": \"a\","
				     "\"ssh_key_file\": \"/nonexistent/id_ed25519\", \"bash_file\": \"/x\","
				     "\"remote_port\": 5}, {\"name\": \"b\", \"route_name\": \"b\","
				     "\"ssh_key_file\": \"/tmp\", \"bash_file\": \"/x\", \"remote_port\": 7}]}",
				     &errs);

	(void)state;
	/* the gateway still starts (the other services work); -t fails on these */
	assert_null(errs);
	assert_non_null(c);
	assert_true(has_error(c->svc_problems,
			      "Services[0].ssh_key_file: /nonexistent/id_ed25519: No such file"));
	assert_true(has_error(c->svc_problems, "Services[1].ssh_key_file: /tmp: is a directory"));
	config_free(c);
}

static void test_port_of_the_wrong_type_says_so(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"Services\": [{\"name\": \"a\", \"route_name\": \"a\","
				     "\"bash_file\": \"/x\", \"remote_port\": \"8083\", \"timeout\": 1.5}]}",
				     &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "Services[0].remote_port: must be a port number, an integer "
				    "1-65535, got string \"8083\""));
	assert_true(has_error(errs, "Services[0].timeout: must be a positive integer, got 1.5"));
	assert_false(has_error(errs, "required"));
	config_free_errors(errs);
}

static void test_misspelled_keys_get_a_hint(void **state)
{
	char **errs = NULL;
	struct config *c = load_text("{\"Servcies\": [], \"admin_tokn\": \"x\", \"Services\": ["
				     "{\"name\": \"a\", \"route_name\": \"a\", \"bash_file\": \"/x\","
				     "\"remote_port\": 5, \"tiemout\": 5, \"Launcher\": \"local\","
				     "\"zzzzzz\": 1}]}",
				     &errs);

	(void)state;
	assert_null(c);
	assert_true(has_error(errs, "$.Servcies: unknown key (did you mean \"Services\"?)"));
	assert_true(has_error(errs, "$.admin_tokn: unknown key (did you mean \"admin_token\"?)"));
	assert_true(has_error(errs, "Services[0].tiemout: unknown key (did you mean \"timeout\"?)"));
	assert_true(has_error(errs, "Services[0].Launcher: unknown key (did you mean \"launcher\"?)"));
	assert_true(has_error(errs, "Services[0].zzzzzz: unknown key"));
	assert_false(has_error(errs, "zzzzzz: unknown key (did"));
	config_free_errors(errs);
}

static void test_access_log_and_key_names(void **state)
{
	char **errs = NULL, text[1024];
	struct config *c;

	(void)state;
	snprintf(text, sizeof text,
		 "{\"access_log\": \"%s/access.log\", \"api_keys\": [{\"key\": \"0123456789\", \"name\": \"alice\"},"
		 "{\"key\": \"abcdefghij\"}], \"Services\": []}", dir);
	c = load_text(text, &errs);
	assert_null(errs);
	assert_non_null(c);
	assert_string_equal(c->api_keys[0].name, "alice");
	assert_null(c->api_keys[1].name);
	assert_int_equal(c->log_repeat_interval, 10);
	config_free(c);
	c = load_text("{\"access_log\": \"/nonexistent-dir/a.log\", \"api_keys\": ["
		      "{\"key\": \"0123456789\", \"name\": \"a b\"}, {\"key\": \"abcdefghij\", \"name\": \"x\"},"
		      "{\"key\": \"klmnopqrst\", \"name\": \"x\"}], \"Services\": []}",
		      &errs);
	assert_null(c);
	assert_true(has_error(errs, "$.access_log: /nonexistent-dir/a.log: cannot create it in /nonexistent-dir"));
	assert_true(has_error(errs, "$.api_keys[0].name: must be letters"));
	assert_true(has_error(errs, "api_keys[2].name: \"x\" also names api_keys[1]"));
	config_free_errors(errs);
	c = load_text("{\"access_log\": \"/tmp\", \"Services\": []}", &errs);
	assert_null(c);
	assert_true(has_error(errs, "$.access_log: /tmp: is a directory"));
	config_free_errors(errs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seed_schema_loads_with_defaults),
		cmocka_unit_test(test_local_bash_file_resolves_against_config_folder),
		cmocka_unit_test(test_bad_timeout_names_the_field),
		cmocka_unit_test(test_every_error_in_one_pass),
		cmocka_unit_test(test_unknown_launcher_refused_with_known_names),
		cmocka_unit_test(test_duplicates_are_rejected),
		cmocka_unit_test(test_invalid_json_gives_line),
		cmocka_unit_test(test_duplicate_key_and_missing_services),
		cmocka_unit_test(test_local_bash_file_must_be_executable),
		cmocka_unit_test(test_listen_host_name_is_resolved_like_the_start_does),
		cmocka_unit_test(test_listen_port_zero_is_rejected),
		cmocka_unit_test(test_bash_file_directory_is_rejected),
		cmocka_unit_test(test_missing_ssh_key_file_is_a_problem),
		cmocka_unit_test(test_port_of_the_wrong_type_says_so),
		cmocka_unit_test(test_misspelled_keys_get_a_hint),
		cmocka_unit_test(test_access_log_and_key_names),
		cmocka_unit_test(test_config_freed_with_last_reference),
	};
	return cmocka_run_group_tests_name("config", tests, setup, teardown);
}

/* test_slurmjob.c - what Slurm's answers mean: one row per job state of
 * Slurm 22.05, node lists, time limits, scontrol fields, sacct lines
 * (includes slurmjob.c). */
#include "../../src/slurmjob.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_every_state_has_a_class(void **state)
{
	static const struct {
		const char *name;
		enum slurmjob_class c;
	} rows[] = {
		{"PENDING", SJ_WAITING},       {"CONFIGURING", SJ_WAITING},
		{"RUNNING", SJ_RUNNING},       {"RESIZING", SJ_RUNNING},
		{"SIGNALING", SJ_RUNNING},     {"SUSPENDED", SJ_PAUSED},
		{"STOPPED", SJ_PAUSED},        {"COMPLETING", SJ_LEAVING},
		{"STAGE_OUT", SJ_LEAVING},     {"REQUEUED", SJ_REQUEUED},
		{"REQUEUE_FED", SJ_REQUEUED},  {"REQUEUE_HOLD", SJ_HELD},
		{"SPECIAL_EXIT", SJ_HELD},     {"RESV_DEL_HOLD", SJ_HELD},
		{"PREEMPTED", SJ_ENDED},       {"COMPLETED", SJ_ENDED},
		{"FAILED", SJ_ENDED},          {"CANCELLED", SJ_ENDED},
		{"TIMEOUT", SJ_ENDED},         {"NODE_FAIL", SJ_ENDED},
		{"OUT_OF_MEMORY", SJ_ENDED},   {"BOOT_FAIL", SJ_ENDED},
		{"DEADLINE", SJ_ENDED},        {"REVOKED", SJ_ENDED},
	};
	const char *says;
	bool unknown;

	(void)state;
	for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
		enum slurmjob_class c = slurmjob_class(rows[k].name, &says, &unknown);
		assert_int_equal(c, rows[k].c);
		assert_false(unknown);
		assert_true((c == SJ_ENDED) == (says == NULL));
		assert_true(slurmjob_ended(rows[k].name) == (c == SJ_ENDED));
	}
	assert_string_equal((slurmjob_class("SUSPENDED", &says, NULL), says), "suspended");
	/* a newer Slurm's state: held, never taken for running or ended */
	assert_int_equal(slurmjob_class("POWER_UP_NODE", &says, &unknown), SJ_PAUSED);
	assert_true(unknown);
	assert_non_null(says);
	assert_false(slurmjob_ended("running"));   /* case matters: squeue prints upper case */
}

static void test_command_port(void **state)
{
	char script[64], line[512];
	const char *head = "JobId=7 JobName=sg:gw:llm:0 UserId=u(1) JobState=RUNNING ";

	(void)state;
	snprintf(line, sizeof line, "%s%s", head,
		 "Command=/home/u/jobs/llm.sh 8000 WorkDir=/home/u StdOut=/home/u/slurm-7.out");
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:0", script, sizeof script), 8000);
	assert_string_equal(script, "/home/u/jobs/llm.sh");
	/* a path with spaces; a relative one, as sbatch got it */
	snprintf(line, sizeof line, "%sCommand=my jobs/llm.sh 8001 WorkDir=/home/u", head);
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:0", script, sizeof script), 8001);
	assert_string_equal(script, "my jobs/llm.sh");
	/* the last field */
	snprintf(line, sizeof line, "%sCommand=llm.sh 8002\n", head);
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:0", script, sizeof script), 8002);
	/* another job's answer, no argument, not a port, no Command */
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:1", script, sizeof script), 0);
	assert_string_equal(script, "");
	snprintf(line, sizeof line, "%sCommand=/home/u/llm.sh WorkDir=/home/u", head);
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:0", script, sizeof script), 0);
	snprintf(line, sizeof line, "%sCommand=/home/u/llm.sh 8000x WorkDir=/home/u", head);
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:0", script, sizeof script), 0);
	snprintf(line, sizeof line, "%sCommand=/home/u/llm.sh 70000 WorkDir=/home/u", head);
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:0", script, sizeof script), 0);
	snprintf(line, sizeof line, "%sCommand=8000 WorkDir=/home/u", head);
	assert_int_equal(slurmjob_command_port(line, "sg:gw:llm:0", script, sizeof script), 0);
	assert_int_equal(slurmjob_command_port(head, "sg:gw:llm:0", script, sizeof script), 0);
	assert_int_equal(slurmjob_command_port("", "sg:gw:llm:0", script, sizeof script), 0);
}

static void test_reason(void **state)
{
	(void)state;
	assert_false(slurmjob_has_reason(""));
	assert_false(slurmjob_has_reason("None"));
	assert_false(slurmjob_has_reason("(null)"));
	assert_true(slurmjob_has_reason("BeginTime"));
	/* waits for scontrol release */
	assert_true(slurmjob_held("PENDING", "JobHeldAdmin"));
	assert_true(slurmjob_held("PENDING", "JobHeldUser"));
	assert_true(slurmjob_held("PENDING", "job requeued in held state"));
	assert_true(slurmjob_held("PENDING", "job_requeued_in_held_state"));
	assert_true(slurmjob_held("PENDING", "JobHoldMaxRequeue"));
	assert_true(slurmjob_held("REQUEUE_HOLD", ""));
	assert_true(slurmjob_held("SPECIAL_EXIT", "None"));
	assert_false(slurmjob_held("PENDING", "BeginTime"));
	assert_false(slurmjob_held("PENDING", "Priority"));
	assert_false(slurmjob_held("REQUEUED", "None"));
}

static void test_first_node(void **state)
{
	char out[16];

	(void)state;
	slurmjob_first_node("gpu[03-04,07]", out, sizeof out);
	assert_string_equal(out, "gpu03");
	slurmjob_first_node("node2,node1", out, sizeof out);
	assert_string_equal(out, "node2");
	slurmjob_first_node("", out, sizeof out);
	assert_string_equal(out, "");
	slurmjob_first_node("averyveryverylongnodename", out, sizeof out);
	assert_int_equal(strlen(out), sizeof out - 1);
}

static void test_time_left(void **state)
{
	(void)state;
	assert_int_equal(slurmjob_time_left("UNLIMITED"), -1);
	assert_int_equal(slurmjob_time_left("INVALID"), -1);
	assert_int_equal(slurmjob_time_left(""), -1);
	assert_int_equal(slurmjob_time_left("59"), 59);
	assert_int_equal(slurmjob_time_left("59:59"), 3599);
	assert_int_equal(slurmjob_time_left("1:00:00"), 3600);
	assert_int_equal(slurmjob_time_left("1-02:03:04"), 93784);
	assert_int_equal(slurmjob_time_left("2-03"), 2 * 86400 + 3 * 3600);
	assert_int_equal(slurmjob_time_left("1-00:05"), 86400 + 300);
}

static void test_field(void **state)
{
	char out[32];
	const char *line = "JobId=42 JobName=sg:a:llm:0 JobState=PENDING Reason=BeginTime "
			   "Dependency=(null) NodeList=(null) BatchHost=node7";

	(void)state;
	slurmjob_field(line, "JobState", out, sizeof out);
	assert_string_equal(out, "PENDING");
	slurmjob_field(line, "Reason", out, sizeof out);
	assert_string_equal(out, "BeginTime");
	slurmjob_field(line, "JobId", out, sizeof out);
	assert_string_equal(out, "42");
	slurmjob_field(line, "Host", out, sizeof out);   /* not BatchHost's tail */
	assert_string_equal(out, "");
	slurmjob_field(line, "NodeList", out, sizeof out);
	assert_string_equal(out, "(null)");
	slurmjob_field("", "JobState", out, sizeof out);
	assert_string_equal(out, "");
}

static void test_sacct_line(void **state)
{
	char st[16], code[16];

	(void)state;
	assert_true(slurmjob_sacct_line("CANCELLED by 0|0:15\n", st, sizeof st, code, sizeof code));
	assert_string_equal(st, "CANCELLED");
	assert_string_equal(code, "0:15");
	assert_true(slurmjob_sacct_line("FAILED|1:0\nCOMPLETED|0:0\n", st, sizeof st, code, sizeof code));
	assert_string_equal(st, "FAILED");
	assert_string_equal(code, "1:0");
	assert_true(slurmjob_sacct_line("NODE_FAIL", st, sizeof st, code, sizeof code));
	assert_string_equal(code, "");
	assert_false(slurmjob_sacct_line("", st, sizeof st, code, sizeof code));
	assert_false(slurmjob_sacct_line("\n|0:0\n", st, sizeof st, code, sizeof code));
}

static void test_split(void **state)
{
	char line[] = "123|sg:x:llm:0|RUNNING|node1|59:00|None", two[] = "node1|10.0.0.1|extra";
	char empty[] = "", *f[6];

	(void)state;
	assert_int_equal(slurmjob_split(line, f, 6), 6);
	assert_string_equal(f[0], "123");
	assert_string_equal(f[3], "node1");
	assert_string_equal(f[5], "None");
	/* at most N fields: the last keeps the rest */
	assert_int_equal(slurmjob_split(two, f, 2), 2);
	assert_string_equal(f[1], "10.0.0.1|extra");
	assert_int_equal(slurmjob_split(empty, f, 6), 1);
	assert_string_equal(f[0], "");
}

static void test_tail_lines(void **state)
{
	char buf[40];

	(void)state;
	slurmjob_tail_lines("loading\n\n  RuntimeError: CUDA out of memory  \r\n", buf, sizeof buf);
	assert_string_equal(buf, "...g | RuntimeError: CUDA out of memory");
	slurmjob_tail_lines("a\nb\n", buf, sizeof buf);
	assert_string_equal(buf, "a | b");
	slurmjob_tail_lines("", buf, sizeof buf);
	assert_string_equal(buf, "");
	slurmjob_tail_lines("\n \n", buf, sizeof buf);
	assert_string_equal(buf, "");
	/* output that is not UTF-8, and the cut inside a character, are '?':
	 * the reason goes into JSON, which takes UTF-8 only */
	{
		char u[16], in[64];
		slurmjob_tail_lines("caf\303 \377\376 ok \303\251", u, sizeof u);
		assert_string_equal(u, "caf? ?? ok \303\251");
		/* 12 bytes kept after "...": the first is the 2nd byte of an \303\251 */
		snprintf(in, sizeof in, "xxxxxxxxxx\303\251abcdefghijk");
		slurmjob_tail_lines(in, u, sizeof u);
		assert_string_equal(u, "...?abcdefghijk");
		char o[] = "\300\257 \355\240\200 \364\220\200\200 \360\237\230\200";
		assert_string_equal(utf8_scrub(o), "?? ??? ???? \360\237\230\200");
	}
	/* control bytes of the output (CR, ESC) are spaces in the reason */
	slurmjob_tail_lines("x\033]0;t\007y\rdata: z\n", buf, sizeof buf);
	assert_string_equal(buf, "x ]0;t y data: z");
	/* too long: the end is what matters */
	slurmjob_tail_lines("0123456789012345678901234567890123456789\nthe end", buf, sizeof buf);
	assert_int_equal(strlen(buf), sizeof buf - 1);
	assert_true(strncmp(buf, "...", 3) == 0);
	assert_true(strstr(buf, "| the end") != NULL);
}

static void test_sbatch_id(void **state)
{
	char id[32];

	(void)state;
	assert_true(slurmjob_sbatch_id("4711\n", id, sizeof id));
	assert_string_equal(id, "4711");
	assert_true(slurmjob_sbatch_id("4711;gpucluster\n", id, sizeof id));
	assert_string_equal(id, "4711");
	/* a wrapper's or a login shell's chatter before (and after) the id */
	assert_true(slurmjob_sbatch_id("Notice: fair-share 0.42\n\n  4712 \r\nbye\n", id, sizeof id));
	assert_string_equal(id, "4712");
	assert_true(slurmjob_sbatch_id("Submitted 3 jobs today\n4713", id, sizeof id));
	assert_string_equal(id, "4713");
	/* no line that is only an id */
	assert_false(slurmjob_sbatch_id("", id, sizeof id));
	assert_string_equal(id, "");
	assert_false(slurmjob_sbatch_id("Submitted batch job 4714\n", id, sizeof id));
	assert_false(slurmjob_sbatch_id("4714 jobs\n12;a;b\n", id, sizeof id));
	assert_false(slurmjob_sbatch_id("123456789012345678901234567890123456\n", id, sizeof id));
}

static void test_start_time(void **state)
{
	(void)state;
	setenv("TZ", "UTC", 1);
	tzset();
	assert_true(slurmjob_start_time("2026-11-29T12:24:16") == 1795955056.0);
	assert_true(slurmjob_start_time("1795955056") == 1795955056.0);
	assert_true(slurmjob_start_time("N/A") == 0);
	assert_true(slurmjob_start_time("Unknown") == 0);
	assert_true(slurmjob_start_time("") == 0);
	assert_true(slurmjob_start_time("12x") == 0);
	assert_true(slurmjob_start_time("2026-11-29T12:24:16x") == 0);
}

static void test_not_ours(void **state)
{
	char why[256], line[512];
	const char *head = "JobId=7 JobName=sg:gw:llm:0 UserId=u(1) JobState=PENDING ";
	struct tm tm = {.tm_year = 126, .tm_mon = 10, .tm_mday = 30, .tm_hour = 8, .tm_isdst = -1};
	double t = (double)mktime(&tm);   /* 2026-11-30T08:00:00, local time */

	(void)state;
	snprintf(line, sizeof line, "%sSubmitTime=2026-11-30T08:00:00 Command=/j/llm.sh 8000 "
		 "WorkDir=/j", head);
	assert_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, t, why, sizeof why));
	/* the gateway's clock a little ahead of the controller's: still ours */
	assert_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, t + 30, why, sizeof why));
	/* queued well before this sbatch began: an earlier one, or by hand
	 * (in local time, whose zone may not be the gateway's: a day and more) */
	assert_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, t + 120, why, sizeof why));
	assert_non_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, t + 27 * 3600, why, sizeof why));
	assert_string_equal(why, "it was submitted at 2026-11-30T08:00:00, before this sbatch began");
	assert_non_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8001, t, why, sizeof why));
	assert_string_equal(why, "it was submitted for port 8000, not 8001");
	assert_non_null(slurmjob_not_ours(line, "sg:gw:llm:1", 8000, t, why, sizeof why));
	assert_string_equal(why, "it is named sg:gw:llm:0 now");
	/* sbatch --wrap: Command=(null) */
	snprintf(line, sizeof line, "%sSubmitTime=2026-11-30T08:00:00 Command=(null) WorkDir=/j", head);
	assert_non_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, t, why, sizeof why));
	assert_string_equal(why, "it does not run SCRIPT PORT (Command=(null)): submitted by hand?");
	/* no SubmitTime said: the command decides */
	snprintf(line, sizeof line, "%sCommand=/j/llm.sh 8000 WorkDir=/j", head);
	assert_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, t + 1e6, why, sizeof why));
}

/* scontrol prints SubmitTime in the local time of the host it runs on (the
 * login node, through ssh or the agent), which need not be the gateway's:
 * a gateway in a container on UTC, a login node on America/Chicago. The
 * job its lost sbatch queued a second ago must still be its own (it was
 * taken as "submitted before this sbatch began" and left running,
 * untracked, until its time limit). */
static void test_not_ours_submit_time_of_another_zone(void **state)
{
	char why[256], line[512], at[64];
	const char *old = getenv("TZ");
	char *saved = old ? strdup(old) : NULL;
	time_t now = time(NULL);
	struct tm tm;

	(void)state;
	setenv("TZ", "CST6", 1);   /* the login node's scontrol (no tzdata needed) */
	tzset();
	localtime_r(&now, &tm);
	strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%S", &tm);
	setenv("TZ", "UTC0", 1);   /* the gateway's */
	tzset();
	snprintf(line, sizeof line, "JobId=7 JobName=sg:gw:llm:0 JobState=PENDING SubmitTime=%s "
		 "Command=/j/llm.sh 8000 WorkDir=/j", at);
	assert_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, (double)now - 1, why, sizeof why));
	/* SLURM_TIME_FORMAT=%s: the instant itself, compared closely */
	snprintf(line, sizeof line, "JobId=7 JobName=sg:gw:llm:0 JobState=PENDING SubmitTime=%lld "
		 "Command=/j/llm.sh 8000 WorkDir=/j", (long long)now - 7200);
	assert_non_null(slurmjob_not_ours(line, "sg:gw:llm:0", 8000, (double)now, why, sizeof why));
	if (saved)
		setenv("TZ", saved, 1);
	else
		unsetenv("TZ");
	free(saved);
	tzset();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_state_has_a_class),
		cmocka_unit_test(test_reason),
		cmocka_unit_test(test_first_node),
		cmocka_unit_test(test_time_left),
		cmocka_unit_test(test_field),
		cmocka_unit_test(test_sacct_line),
		cmocka_unit_test(test_split),
		cmocka_unit_test(test_command_port),
		cmocka_unit_test(test_tail_lines),
		cmocka_unit_test(test_sbatch_id),
		cmocka_unit_test(test_start_time),
		cmocka_unit_test(test_not_ours),
		cmocka_unit_test(test_not_ours_submit_time_of_another_zone),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

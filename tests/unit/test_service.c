/* test_service.c - routing and the service state machine, driven through the
 * real event loop with real child processes (includes service.c). */
#include <event2/event.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/service.c"
#include "config.h"
#include "proc.h"

/* after service.c: cmocka defines a fail() macro */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

static char dir[] = "/tmp/sg-svc-XXXXXX";
static struct event_base *base;
static struct config *cfg;

struct rec {
	struct waiter w;
	int readies, fails, status;
	char reason[600];
	struct instance *inst;
};

static void rec_ready(struct waiter *w, struct instance *i)
{
	struct rec *r = (struct rec *)w;
	r->readies++;
	r->inst = i;
}

static void rec_fail(struct waiter *w, int status, const char *reason, int retry_after)
{
	struct rec *r = (struct rec *)w;
	(void)retry_after;
	r->fails++;
	r->status = status;
	snprintf(r->reason, sizeof r->reason, "%s", reason);
}

static void rec_init(struct rec *r)
{
	memset(r, 0, sizeof *r);
	r->w.ready = rec_ready;
	r->w.fail = rec_fail;
}

static void write_script(const char *name, const char *body)
{
	char path[300];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "w");
	fputs(body, f);
	fclose(f);
	chmod(path, 0755);
}

/* Run the loop until *flag becomes nonzero or 10 s pass. */
static void run_until(const int *flag)
{
	double end = now_s() + 10;

	while (!*flag && now_s() < end)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
}

static int setup(void **state)
{
	char path[300], demo[600], *errs_s = NULL;
	char **errs = NULL;
	FILE *f;

	(void)state;
	(void)errs_s;
	if (mkdtemp(dir) == NULL)
		return -1;
	write_script("fail.sh", "#!/bin/sh\necho loading >&2\necho 'model not found' >&2\nexit 3\n");
	if (realpath("examples/demo_service.sh", demo) == NULL)
		return -1;
	snprintf(path, sizeof path, "%s/c.json", dir);
	f = fopen(path, "w");
	fprintf(f,
		"{\"Services\": ["
		"{\"name\": \"bad\", \"route_name\": \"bad\", \"launcher\": \"local\", \"bash_file\": \"fail.sh\","
		" \"remote_port\": 23901},"
		"{\"name\": \"nohold\", \"route_name\": \"nohold\", \"launcher\": \"local\", \"bash_file\": \"fail.sh\","
		" \"remote_port\": 23902, \"hold\": false},"
		"{\"name\": \"demo\", \"route_name\": \"llm\", \"launcher\": \"local\", \"bash_file\": \"%s\","
		" \"remote_port\": 23903, \"timeout\": 1, \"stop_grace\": 2}]}",
		demo);
	fclose(f);
	cfg = config_load(path, &errs);
	if (cfg == NULL)
		return -1;
	base = event_base_new();
	http_init(base);
	proc_init(base);
	services_init(base, cfg);
	return 0;
}

static int teardown(void **state)
{
	char cmd[300];

	(void)state;
	services_free();
	config_free(cfg);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_routing_matches_whole_segment(void **state)
{
	(void)state;
	assert_non_null(service_by_route("llm", 3));
	assert_string_equal(service_config(service_by_route("llm", 3))->name, "demo");
	assert_non_null(service_by_route("bad", 3));
	assert_null(service_by_route("ll", 2));
	assert_null(service_by_route("llmx", 4));
	assert_null(service_by_route("", 0));
	assert_non_null(service_by_name("nohold"));
	assert_null(service_by_name("nope"));
}

static void test_failed_start_answers_every_waiter_and_backs_off(void **state)
{
	struct service *s = service_by_route("bad", 3);
	struct rec r[5];
	struct instance *inst;
	const char *reason;
	int status, ra, rc;

	(void)state;
	for (int k = 0; k < 5; k++) {
		rec_init(&r[k]);
		rc = service_request(s, &r[k].w, true, &inst, &status, &reason, &ra);
		assert_int_equal(rc, 1);
	}
	assert_int_equal(service_starts(s), 1);   /* one start for five requests */
	assert_int_equal(service_state(s), SVC_STARTING);
	run_until(&r[4].fails);
	for (int k = 0; k < 5; k++) {
		assert_int_equal(r[k].fails, 1);
		assert_int_equal(r[k].readies, 0);
		assert_int_equal(r[k].status, 503);
		assert_string_equal(r[k].reason, "start script exited with status 3: model not found");
	}
	assert_int_equal(service_state(s), SVC_FAILED);

	/* the first failure may be retried at once */
	rec_init(&r[0]);
	assert_int_equal(service_request(s, &r[0].w, true, &inst, &status, &reason, &ra), 1);
	assert_int_equal(service_starts(s), 2);
	run_until(&r[0].fails);
	/* a second one in a row backs off: refused now, without a start */
	rec_init(&r[1]);
	rc = service_request(s, &r[1].w, true, &inst, &status, &reason, &ra);
	assert_int_equal(rc, -1);
	assert_int_equal(status, 503);
	assert_true(ra >= 1);
	assert_non_null(strstr(reason, "exited with status 3"));
	assert_int_equal(service_starts(s), 2);
}

static void test_hold_false_refuses_at_once_but_starts(void **state)
{
	struct service *s = service_by_route("nohold", 6);
	struct rec r;
	struct instance *inst;
	const char *reason;
	int status, ra;

	(void)state;
	rec_init(&r);
	assert_int_equal(service_request(s, &r.w, false, &inst, &status, &reason, &ra), -1);
	assert_int_equal(status, 503);
	assert_true(ra > 0);
	assert_int_equal(service_starts(s), 1);
	assert_int_equal(service_waiting(s), 0);
}

static void test_disabled_management_refuses_a_start(void **state)
{
	struct service *s = service_by_route("llm", 3);
	struct rec r;
	struct instance *inst;
	const char *reason;
	int status, ra;

	(void)state;
	services_managed = false;
	rec_init(&r);
	assert_int_equal(service_request(s, &r.w, true, &inst, &status, &reason, &ra), -1);
	assert_string_equal(reason, "service management is disabled");
	assert_int_equal(service_starts(s), 0);
	services_managed = true;
}

static void test_cancelled_waiter_is_not_answered(void **state)
{
	struct service *s = service_by_route("llm", 3);
	struct rec a, b;
	struct instance *inst;
	const char *reason;
	int status, ra, gone = 0;

	(void)state;
	rec_init(&a);
	rec_init(&b);
	assert_int_equal(service_request(s, &a.w, true, &inst, &status, &reason, &ra), 1);
	assert_int_equal(service_request(s, &b.w, true, &inst, &status, &reason, &ra), 1);
	assert_int_equal(service_waiting(s), 2);
	service_cancel(&a.w);
	assert_int_equal(service_waiting(s), 1);
	run_until(&b.readies);
	assert_int_equal(b.readies, 1);
	assert_int_equal(a.readies + a.fails, 0);
	assert_int_equal(service_state(s), SVC_READY);
	assert_int_equal(b.inst->inflight, 1);
	assert_int_equal(service_starts(s), 1);

	/* in flight: the idle clock does not run, whatever the timeout */
	assert_true(service_idle_left(s) < 0);
	instance_release(b.inst);
	assert_true(service_idle_left(s) > 0);
	/* idle for timeout (1 s): stopped, and the process reaped */
	while (service_first_instance(s) != NULL && !gone) {
		run_until(&gone);   /* bounded: returns after 10 s at most */
		gone = service_first_instance(s) == NULL;
	}
	assert_null(service_first_instance(s));
	assert_int_equal(service_state(s), SVC_STOPPED);
	assert_int_equal(proc_count(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_routing_matches_whole_segment),
		cmocka_unit_test(test_failed_start_answers_every_waiter_and_backs_off),
		cmocka_unit_test(test_hold_false_refuses_at_once_but_starts),
		cmocka_unit_test(test_disabled_management_refuses_a_start),
		cmocka_unit_test(test_cancelled_waiter_is_not_answered),
	};
	return cmocka_run_group_tests_name("service", tests, setup, teardown);
}

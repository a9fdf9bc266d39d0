# slurmgate - make run | make test | make bench
#
# Packagers: CC, CPPFLAGS, CFLAGS, LDFLAGS and PKG_CONFIG are honoured (the
# flags the build needs are added separately, so `make CFLAGS=...` keeps
# them). Warnings are errors only when WERROR=-Werror: `make test` (and so
# CI, .ci/run) sets it; a plain build does not.
CC         ?= cc
CFLAGS     ?= -O2 -g
PKG_CONFIG ?= pkg-config
PYTHON     ?= /usr/bin/python3
WERROR     ?=

# Libraries and their cflags from pkg-config; http_parser has no .pc on
# Debian. Before `make deps` has installed pkg-config (a fresh machine), the
# plain -l names are used.
PKGS         = libevent jansson
PKG_CFLAGS  := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null || echo -levent -ljansson)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null || echo -lcmocka)
LIBS         = $(PKG_LIBS) -lhttp_parser -lm

SG_CPPFLAGS = -D_GNU_SOURCE -Ibuild/gen $(PKG_CFLAGS)
SG_CFLAGS   = -std=c11 -Wall -Wextra -Wshadow $(WERROR)
COMPILE     = $(CC) $(SG_CPPFLAGS) $(CPPFLAGS) $(SG_CFLAGS) $(CFLAGS)

SRCS    := $(filter-out src/main.c,$(wildcard src/*.c))
HDRS    := $(wildcard src/*.h)
OBJS    := $(SRCS:src/%.c=build/obj/%.o)
AOBJS   := $(SRCS:src/%.c=build/asan/%.o)
UNIT    := $(patsubst tests/unit/%.c,build/%,$(wildcard tests/unit/test_*.c))
UNIT_ASAN := $(UNIT:build/%=build/unit-asan/%)
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# Debian packages each part needs (installed by make when missing, as root).
BUILD_PKGS = gcc make pkg-config libevent-dev libhttp-parser-dev libjansson-dev
TEST_PKGS  = libcmocka-dev python3-pytest curl procps iproute2 chromium fonts-dejavu-core nginx-light openssl man-db groff-base clang libclang-rt-14-dev nodejs
BENCH_PKGS = wrk nginx-light valgrind

.PHONY: all run test unit unit-asan integration asan integration-both chaos chaos-short bench deps test-deps bench-deps clean fuzz fuzz-short fuzz-build

all: build/slurmgate build/demo_service

deps:
	@tools/ensure-packages $(BUILD_PKGS)

test-deps: deps
	@tools/ensure-packages $(TEST_PKGS)
	@$(MAKE) --no-print-directory $(JS_DEPS)

# The real JavaScript clients the integration tests drive (the `openai` and
# `@huggingface/inference` npm packages; tests/integration/jsclient.py), at
# the versions tests/js/package-lock.json pins. npm comes with Node.js from
# NodeSource; Debian ships it as its own package.
JS_DEPS = tests/js/node_modules/.installed
$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	@command -v npm >/dev/null || tools/ensure-packages npm
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

bench-deps: deps
	@tools/ensure-packages $(BENCH_PKGS)

GEN = build/gen/status_html.h

# The status page is one self-contained HTML file, compiled in as a string.
build/gen/status_html.h: src/status.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from src/status.html */'; echo 'static const char status_html[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; echo ';'; } > $@

build/obj/%.o: src/%.c $(HDRS) $(GEN) build/flags
	@mkdir -p $(dir $@)
	$(COMPILE) -c -o $@ $<

build/asan/%.o: src/%.c $(HDRS) $(GEN) build/flags
	@mkdir -p $(dir $@)
	$(COMPILE) -O1 $(SANFLAGS) -c -o $@ $<

build/slurmgate: build/obj/main.o $(OBJS)
	$(COMPILE) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS)

build/slurmgate-asan: build/asan/main.o $(AOBJS)
	$(COMPILE) $(SANFLAGS) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS)

# The demo service: the test double behind make run, the tests and bench.
# The -asan build runs under the tests with DEMO_SERVICE_BIN set to it.
build/demo_service: tests/fixtures/demo_service.c build/flags
	@mkdir -p build
	$(COMPILE) $(LDFLAGS) -o $@ $< $(PKG_LIBS) -lm

build/demo_service-asan: tests/fixtures/demo_service.c build/flags
	@mkdir -p build
	$(COMPILE) -O1 $(SANFLAGS) $(LDFLAGS) -o $@ $< $(PKG_LIBS) -lm

# A unit test links every object but the one it includes (test_NAME.c may
# #include src/NAME.c to reach its static functions); each is built twice,
# plain and under ASan+UBSan.
build/test_%: tests/unit/test_%.c $(OBJS) $(HDRS)
	$(COMPILE) -Isrc $(LDFLAGS) -o $@ $< $(filter-out build/obj/$*.o,$(OBJS)) $(LIBS) $(CMOCKA_LIBS)

build/unit-asan/test_%: tests/unit/test_%.c $(AOBJS) $(HDRS)
	@mkdir -p $(dir $@)
	$(COMPILE) -O1 $(SANFLAGS) -Isrc $(LDFLAGS) -o $@ $< $(filter-out build/asan/$*.o,$(AOBJS)) $(LIBS) $(CMOCKA_LIBS)

# deps first, then the build (never both at once under -j: on a fresh machine
# the build needs what deps installs).
run: deps
	$(MAKE) all
	@echo
	@echo "slurmgate on http://127.0.0.1:8090 with examples/demo.json; the demo service takes"
	@echo "DEMO_DELAY=3 s to 'load its model', so the first request is held. Try, in another shell:"
	@echo "  curl -s localhost:8090/info"
	@echo "  curl -s localhost:8090/llm/generate -d '{\"inputs\":\"hi\"}'          # cold start: held, then answered"
	@echo "  curl -sN localhost:8090/llm/generate_stream -d '{\"inputs\":\"hi\"}'  # SSE, token by token"
	@echo "  curl -s localhost:8090/check_llm"
	@echo
	DEMO_DELAY=$${DEMO_DELAY:-3} build/slurmgate -c examples/demo.json

unit: $(UNIT) unit-asan
	@for t in $(UNIT); do echo "== $$t"; $$t || exit 1; done

unit-asan: $(UNIT_ASAN)
	@for t in $(UNIT_ASAN); do echo "== $$t"; \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $$t || exit 1; done

PYTEST       = $(PYTHON) -m pytest -q -p no:cacheprovider
ASAN_RUN_ENV = SLURMGATE_BIN=build/slurmgate-asan \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66 UBSAN_OPTIONS=print_stacktrace=1

integration: all
	$(PYTEST) tests/integration

asan: build/slurmgate-asan build/demo_service
	$(ASAN_RUN_ENV) $(PYTEST) tests/integration

# Both suites at once, as make test runs them: they mostly wait (on Slurm,
# on timeouts, on clients), so side by side they take little longer than the
# slower one alone. Each picks its ports from a range of its own
# (SG_TEST_PORTS, tests/lib/sgtestlib.py: its 10000-31999, below the
# kernel's ephemeral range, split in two), so neither hands out a port the
# other just found free. Each log is printed when its suite ends (live:
# tail -f build/test-*.log).
PLAIN_PORTS ?= 10000-20999
ASAN_PORTS  ?= 21000-31999
integration-both: all build/slurmgate-asan build/demo_service
	@echo "integration: the plain and the ASan/UBSan suites side by side" \
	  "(logs: build/test-plain.log, build/test-asan.log)"
	@SG_TEST_PORTS=$(PLAIN_PORTS) $(PYTEST) tests/integration >build/test-plain.log 2>&1 & p=$$!; \
	SG_TEST_PORTS=$(ASAN_PORTS) $(ASAN_RUN_ENV) $(PYTEST) tests/integration \
	  >build/test-asan.log 2>&1 & a=$$!; \
	wait $$p; rp=$$?; echo "== plain suite (exit $$rp)"; cat build/test-plain.log; \
	wait $$a; ra=$$?; echo "== ASan/UBSan suite (exit $$ra)"; cat build/test-asan.log; \
	[ $$rp -eq 0 ] && [ $$ra -eq 0 ]

# Chaos soak (tests/chaos/chaos.py) against the ASan/UBSan build: load on a
# Slurm and two local services while faults hit them on a seeded schedule
# (CHAOS_SEED reproduces one). make chaos runs every fault class for
# CHAOS_SECONDS; make test runs a 2-minute soak with the fault classes in
# CHAOS_SHORT_FAULTS (those main handles; see the README).
CHAOS_SECONDS ?= 900
CHAOS_FAULTS ?= kill_local_exec,kill_local_nonexec,kill_local_script,kill_slurm_proc,scancel,requeue,suspend,drain,down,kill_ssh_master,sighup,kill9_gateway
CHAOS_SHORT_SECONDS ?= 120
CHAOS_SHORT_FAULTS ?= kill_local_exec,kill_local_nonexec,sighup,drain,suspend
CHAOS_ENV = SLURMGATE_BIN=build/slurmgate-asan

chaos: test-deps all build/slurmgate-asan
	$(CHAOS_ENV) timeout $$(( $(CHAOS_SECONDS) + 600 )) $(PYTHON) tests/chaos/chaos.py \
	  --seconds $(CHAOS_SECONDS) --faults $(CHAOS_FAULTS)

chaos-short: all build/slurmgate-asan
	$(CHAOS_ENV) timeout $$(( $(CHAOS_SHORT_SECONDS) + 400 )) $(PYTHON) tests/chaos/chaos.py \
	  --seconds $(CHAOS_SHORT_SECONDS) --faults $(CHAOS_SHORT_FAULTS)

# Warnings are errors in every build make test does.
STRICT = WERROR=-Werror
test: test-deps
	$(MAKE) $(STRICT) all
	$(MAKE) $(STRICT) unit
	$(MAKE) $(STRICT) fuzz-short
	$(MAKE) $(STRICT) integration-both
	$(MAKE) $(STRICT) chaos-short

# --- fuzzing (libFuzzer, clang) ---
# A target NAME is tests/fuzz/fuzz_NAME.c (it defines LLVMFuzzerTestOneInput),
# linked with the src/ objects FUZZ_OBJS_NAME lists; seeds in
# tests/fuzz/corpus/NAME/, reproducers in tests/fuzz/crashes/NAME/ (always
# replayed), an optional dictionary tests/fuzz/NAME.dict. Adding a target:
# its name in FUZZ_TARGETS and one FUZZ_OBJS_ line.
CLANG              ?= clang
FUZZ_TARGETS        = request response config router v1model
FUZZ_OBJS_request   = http_parse http_header util log
FUZZ_OBJS_response  = http_parse http_header util log
FUZZ_OBJS_config    = $(SRCS:src/%.c=%)   # config.c looks launchers up in their registry
FUZZ_OBJS_router    = router util log
FUZZ_OBJS_v1model   = router util log
FUZZ_SECONDS       ?= 300
FUZZ_SHORT_SECONDS ?= 20
FUZZ_SAN            = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS         = -D_GNU_SOURCE -Isrc -Ibuild/gen $(PKG_CFLAGS) $(CPPFLAGS) -std=c11 -g -O1 -Wall -Wextra $(WERROR) $(FUZZ_SAN)
FUZZ_BINS           = $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

build/fuzzobj/%.o: src/%.c $(HDRS) $(GEN) build/flags
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

build/fuzzobj/harness/fuzz_%.o: tests/fuzz/fuzz_%.c $(HDRS) $(wildcard tests/fuzz/*.h) build/flags
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

define FUZZ_LINK
build/fuzz/fuzz_$(1): build/fuzzobj/harness/fuzz_$(1).o $(patsubst %,build/fuzzobj/%.o,$(FUZZ_OBJS_$(1)))
	@mkdir -p $$(dir $$@)
	$$(CLANG) $$(FUZZ_SAN) -fsanitize=fuzzer $$(LDFLAGS) -o $$@ $$^ $$(LIBS)
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call FUZZ_LINK,$(t))))

fuzz-build: $(FUZZ_BINS)

# Each target for FUZZ_SECONDS (make fuzz FUZZ_SECONDS=300).
fuzz: $(FUZZ_BINS)
	@for t in $(FUZZ_TARGETS); do tests/fuzz/run.sh $$t $(FUZZ_SECONDS) || exit 1; done

# In make test: replay reproducers and seeds, then each target briefly
# (FUZZ_SHORT_SECONDS, at most 60) from a fixed seed, so make test runs the
# same inputs each time; make fuzz explores with random seeds.
fuzz-short: $(FUZZ_BINS)
	@s=$(FUZZ_SHORT_SECONDS); [ "$$s" -le 60 ] || s=60; \
	for t in $(FUZZ_TARGETS); do FUZZ_SEED=1 tests/fuzz/run.sh $$t $$s || exit 1; done

bench: bench-deps
	$(MAKE) all
	bench/run

clean:
	rm -rf build

# Everything is rebuilt when the compiler, its flags or the libraries change
# (e.g. when `make test` turns WERROR on after a plain build): build/flags
# is rewritten, so it is newer than every object, only when they differ.
# (Not under make -n or -q, which must change nothing.)
FLAGS_LINE = $(COMPILE) | $(LDFLAGS) $(LIBS) | $(CLANG) $(FUZZ_CFLAGS)
ifeq (,$(findstring n,$(firstword -$(MAKEFLAGS)))$(findstring q,$(firstword -$(MAKEFLAGS))))
ifneq ($(file <build/flags),$(FLAGS_LINE))
$(shell mkdir -p build)
$(file >build/flags,$(FLAGS_LINE))
endif
endif
build/flags: ;

include mk/install.mk

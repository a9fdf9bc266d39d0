# slurmgate - make run | make test | make bench
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow
LIBS     = -levent -lhttp_parser -ljansson -lm
PYTHON  ?= /usr/bin/python3

SRCS    := $(filter-out src/main.c,$(wildcard src/*.c))
HDRS    := $(wildcard src/*.h)
OBJS    := $(SRCS:src/%.c=build/obj/%.o)
AOBJS   := $(SRCS:src/%.c=build/asan/%.o)
UNIT    := $(patsubst tests/unit/%.c,build/%,$(wildcard tests/unit/test_*.c))
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# Debian packages each part needs (installed by make when missing, as root).
BUILD_PKGS = gcc make pkg-config libevent-dev libhttp-parser-dev libjansson-dev
TEST_PKGS  = libcmocka-dev python3-pytest curl procps chromium fonts-dejavu-core nginx-light openssl man-db groff-base clang libclang-rt-14-dev
BENCH_PKGS = wrk nginx-light

.PHONY: all run test unit integration asan chaos chaos-short bench deps test-deps bench-deps clean fuzz fuzz-short fuzz-build

all: build/slurmgate build/demo_service

deps:
	@tools/ensure-packages $(BUILD_PKGS)

test-deps: deps
	@tools/ensure-packages $(TEST_PKGS)

bench-deps: deps
	@tools/ensure-packages $(BENCH_PKGS)

GEN = build/gen/status_html.h

# The status page is one self-contained HTML file, compiled in as a string.
build/gen/status_html.h: src/status.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from src/status.html */'; echo 'static const char status_html[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; echo ';'; } > $@

build/obj/%.o: src/%.c $(HDRS) $(GEN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ibuild/gen -c -o $@ $<

build/asan/%.o: src/%.c $(HDRS) $(GEN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ibuild/gen -O1 $(SANFLAGS) -c -o $@ $<

build/slurmgate: build/obj/main.o $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LIBS)

build/slurmgate-asan: build/asan/main.o $(AOBJS)
	$(CC) $(CFLAGS) $(SANFLAGS) -o $@ $^ $(LIBS)

build/demo_service: examples/demo_service.c
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< -levent

build/test_%: tests/unit/test_%.c $(OBJS) $(HDRS)
	$(CC) $(CFLAGS) -Isrc -Ibuild/gen -o $@ $< $(filter-out build/obj/$*.o,$(OBJS)) $(LIBS) -lcmocka

run: deps all
	@echo
	@echo "slurmgate on http://127.0.0.1:8090 with examples/demo.json; the demo service takes"
	@echo "DEMO_DELAY=3 s to 'load its model', so the first request is held. Try, in another shell:"
	@echo "  curl -s localhost:8090/info"
	@echo "  curl -s localhost:8090/llm/generate -d '{\"inputs\":\"hi\"}'          # cold start: held, then answered"
	@echo "  curl -sN localhost:8090/llm/generate_stream -d '{\"inputs\":\"hi\"}'  # SSE, token by token"
	@echo "  curl -s localhost:8090/check_llm"
	@echo
	DEMO_DELAY=$${DEMO_DELAY:-3} build/slurmgate -c examples/demo.json

unit: $(UNIT)
	@for t in $(UNIT); do echo "== $$t"; $$t || exit 1; done

integration: all
	$(PYTHON) -m pytest -q tests/integration

asan: build/slurmgate-asan build/demo_service
	SLURMGATE_BIN=build/slurmgate-asan \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66 UBSAN_OPTIONS=print_stacktrace=1 \
	$(PYTHON) -m pytest -q tests/integration

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

test: test-deps all
	$(MAKE) unit
	$(MAKE) fuzz-short
	$(MAKE) integration
	$(MAKE) asan
	$(MAKE) chaos-short

# --- fuzzing (libFuzzer, clang) ---
# A target NAME is tests/fuzz/fuzz_NAME.c (it defines LLVMFuzzerTestOneInput),
# linked with the src/ objects FUZZ_OBJS_NAME lists; seeds in
# tests/fuzz/corpus/NAME/, reproducers in tests/fuzz/crashes/NAME/ (always
# replayed), an optional dictionary tests/fuzz/NAME.dict. Adding a target:
# its name in FUZZ_TARGETS and one FUZZ_OBJS_ line.
CLANG              ?= clang
FUZZ_TARGETS        = request response config router v1model
FUZZ_OBJS_request   = http_parse util log
FUZZ_OBJS_response  = http_parse util log
FUZZ_OBJS_config    = config router util log
FUZZ_OBJS_router    = router util log
FUZZ_OBJS_v1model   = router util log
FUZZ_SECONDS       ?= 300
FUZZ_SHORT_SECONDS ?= 20
FUZZ_SAN            = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS         = -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Isrc -Ibuild/gen $(FUZZ_SAN)
FUZZ_BINS           = $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

build/fuzzobj/%.o: src/%.c $(HDRS) $(GEN)
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

build/fuzzobj/harness/fuzz_%.o: tests/fuzz/fuzz_%.c $(HDRS) $(wildcard tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

define FUZZ_LINK
build/fuzz/fuzz_$(1): build/fuzzobj/harness/fuzz_$(1).o $(patsubst %,build/fuzzobj/%.o,$(FUZZ_OBJS_$(1)))
	@mkdir -p $$(dir $$@)
	$$(CLANG) $$(FUZZ_SAN) -fsanitize=fuzzer -o $$@ $$^ $$(LIBS)
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call FUZZ_LINK,$(t))))

fuzz-build: $(FUZZ_BINS)

# Each target for FUZZ_SECONDS (make fuzz FUZZ_SECONDS=300).
fuzz: $(FUZZ_BINS)
	@for t in $(FUZZ_TARGETS); do tests/fuzz/run.sh $$t $(FUZZ_SECONDS) || exit 1; done

# In make test: replay reproducers and seeds, then each target briefly
# (FUZZ_SHORT_SECONDS, at most 60).
fuzz-short: $(FUZZ_BINS)
	@s=$(FUZZ_SHORT_SECONDS); [ "$$s" -le 60 ] || s=60; \
	for t in $(FUZZ_TARGETS); do tests/fuzz/run.sh $$t $$s || exit 1; done

bench: bench-deps all
	bench/run

clean:
	rm -rf build
include mk/install.mk

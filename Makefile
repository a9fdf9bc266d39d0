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

.PHONY: all run test unit integration asan bench deps test-deps bench-deps clean fuzz-router

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

test: test-deps all
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) asan

bench: bench-deps all
	bench/run

# libFuzzer targets of the route resolver and the /v1 model lookup (issue 9).
# `make fuzz-router FUZZ_TIME=300` runs each for FUZZ_TIME seconds on its seed
# corpus in tests/fuzz/corpus/; new inputs go to build/fuzz/corpus-*, crash
# reproducers to build/fuzz/ (copy them to tests/fuzz/corpus/ once fixed).
FUZZ_CC    ?= clang
FUZZ_TIME  ?= 30
FUZZ_FLAGS  = -g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Isrc \
	      -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
ROUTER_FUZZ = build/fuzz/fuzz_router build/fuzz/fuzz_v1model
ROUTER_FUZZ_SRCS = src/router.c src/util.c src/log.c

build/fuzz/fuzz_router: tests/fuzz/fuzz_router.c $(ROUTER_FUZZ_SRCS) src/router.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(ROUTER_FUZZ_SRCS) -ljansson -levent -lm

build/fuzz/fuzz_v1model: tests/fuzz/fuzz_v1model.c $(ROUTER_FUZZ_SRCS) src/router.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(ROUTER_FUZZ_SRCS) -ljansson -levent -lm

fuzz-router: $(ROUTER_FUZZ)
	@for t in router v1model; do \
	  mkdir -p build/fuzz/corpus-$$t; \
	  echo "== fuzz_$$t for $(FUZZ_TIME) s"; \
	  build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) -timeout=5 -rss_limit_mb=1024 \
	    -artifact_prefix=build/fuzz/ build/fuzz/corpus-$$t tests/fuzz/corpus/$$t || exit 1; \
	done

clean:
	rm -rf build
include mk/install.mk

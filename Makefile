# Meridian's build and test entry points. `make test` is the one command the
# README documents and CI (.ci/run) runs.

GO      ?= go
PKG     := ./cmd/meridian
BIN     := meridian
# A tag when there is one, else "dev"; the commit comes separately.
VERSION ?= $(shell git describe --tags --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# The whole suite runs two packages at a time: the machines we test on have
# two cores, and the integration tests share one PostgreSQL.
TEST_P       ?= 2
TEST_TIMEOUT ?= 15m

# Fuzz targets `make test` runs briefly, as package:FuzzName.
FUZZ_TARGETS ?= ./ingest/wire:FuzzDecode ./bridge:FuzzCommand ./dashboard:FuzzParseClientMsg ./dashboard:FuzzJSONToMsgpack \
                ./dashboard:FuzzSafeNext ./dashboard:FuzzListQuery ./clients/go/meridian:FuzzParseFrame ./clients/go/meridian:FuzzClientRead
FUZZTIME     ?= 15s

# Benchmarks: every package with a Benchmark function; compare runs with
# benchstat (golang.org/x/perf/cmd/benchstat).
BENCH_PKGS  = $(shell grep -rlE --include='*_test.go' '^func Benchmark' . | xargs -r -n1 dirname | sort -u)
BENCHTIME   ?= 1s
BENCH_COUNT ?= 5
BENCH_OUT   ?= dist/bench.txt

# os/arch[/variant] for `make release`; all static (CGO_ENABLED=0), which the
# pure-Go SQLite driver allows.
RELEASE_TARGETS ?= linux/amd64 linux/arm64 linux/arm/v7

.PHONY: all build run dashboard package test vet lint generate generate-check fuzz bench release fmt clean

all: build

# The dashboard's front end (uPlot + our JS) is bundled by esbuild into
# dashboard/assets/dist, which the binary embeds. The bundle is not
# committed; without it the binary still builds and its pages say how to
# build it. npm ci runs only when the lockfile changed since the last one.
DASH_WEB := dashboard/web
$(DASH_WEB)/node_modules/.package-lock.json: $(DASH_WEB)/package-lock.json
	cd $(DASH_WEB) && npm ci --no-audit --no-fund

dashboard: $(DASH_WEB)/node_modules/.package-lock.json
	cd $(DASH_WEB) && npm run --silent build

build: dashboard
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) $(PKG)

# The README's run command: the server on its embedded defaults (SQLite under
# ./meridian-data, embedded MQTT broker on 127.0.0.1:1884, port 8470).
run: build
	./$(BIN) serve

test: dashboard
	@$(MAKE) --no-print-directory vet
	@$(MAKE) --no-print-directory generate-check
	$(GO) test -count=1 -p $(TEST_P) -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory fuzz

vet:
	$(GO) vet ./...

lint: vet
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

generate:
	$(GO) generate ./...

# Generated files are committed; regenerating must change nothing. The
# snapshot before and after (rather than a bare `git diff --exit-code`) keeps
# this usable in a checkout with uncommitted work, and also catches new
# untracked output. On a clean clone it is exactly `git diff --exit-code`.
generate-check:
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		echo "generate-check: not a git checkout, skipped"; exit 0; fi; \
	snap() { git status --porcelain=v1 --untracked-files=all; git diff --binary | sha256sum; \
		git ls-files -z --others --exclude-standard | xargs -0 -r sha256sum; }; \
	before="$$(snap)"; \
	$(GO) generate ./... || exit 1; \
	after="$$(snap)"; \
	if [ "$$before" != "$$after" ]; then \
		echo "go generate changed files; run 'make generate' and commit the result:"; \
		git status --short; git diff --stat; exit 1; fi

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg="$${t%%:*}"; name="$${t##*:}"; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
	done
	@echo "fuzz clients/c decoder for $(FUZZTIME)"
	@$(MAKE) --no-print-directory -C clients/c fuzz FUZZTIME=$(patsubst %s,%,$(FUZZTIME))

bench:
	@mkdir -p $(dir $(BENCH_OUT))
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -count $(BENCH_COUNT) $(BENCH_PKGS) | tee $(BENCH_OUT)
	@echo "results in $(BENCH_OUT)"

release: dashboard
	@mkdir -p dist
	@set -e; for t in $(RELEASE_TARGETS); do \
		os="$${t%%/*}"; rest="$${t#*/}"; arch="$${rest%%/*}"; variant=""; \
		case "$$rest" in */*) variant="$${rest#*/}";; esac; \
		goarm=""; if [ "$$arch" = arm ]; then goarm="$${variant#v}"; fi; \
		out="dist/$(BIN)-$$os-$$arch$$variant"; \
		echo "build $$out"; \
		CGO_ENABLED=0 GOOS="$$os" GOARCH="$$arch" GOARM="$$goarm" \
			$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o "$$out" $(PKG); \
	done; \
	cd dist && sha256sum $(BIN)-* > SHA256SUMS

# .deb and .rpm of the release binaries (nfpm through `go run`, see
# deploy/package.sh), with the systemd unit and the default config.
package: release
	VERSION=$(VERSION) sh deploy/package.sh dist

fmt:
	gofmt -w $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')

clean:
	rm -rf $(BIN) dist dashboard/assets/dist $(DASH_WEB)/node_modules

# ami2amqp — common tasks. `make lint` then `make test` is what CI runs (.ci/run).
#
#   make test    start RabbitMQ, install the facade test clients, pika (the
#                snapshot consumer) and promtool if needed, then every test target
#   make lint    rustfmt check + clippy with warnings as errors (whole workspace)
#   make bench   start RabbitMQ if needed, then the benchmarks
#   make fuzz    scripts/fuzz.sh
#   make demo    release build, then scripts/demo.sh (its AMI client: make facade-clients)
#   make deb     release build, then the Debian package (scripts/build-deb.sh)
#   make build   release build
#   make clean   cargo clean

# A fresh machine with rustup has cargo in ~/.cargo/bin, not always on PATH.
ifeq ($(shell command -v cargo 2>/dev/null),)
export PATH := $(HOME)/.cargo/bin:$(PATH)
endif

CARGO ?= cargo

.PHONY: all test lint fmt-check clippy bench fuzz demo build clean rabbitmq facade-clients snapshot-clients promtool deb deb-tools

all: build

rabbitmq:
	bash scripts/ensure-rabbitmq.sh

# The AMI client libraries tests/facade_clients.rs drives (panoramisk,
# asterisk-manager), under target/facade-clients/.
facade-clients:
	bash scripts/ensure-facade-clients.sh

# pika, for the Python consumer tests/snapshot.rs runs
# (tests/snapshot_consumer.py), in a venv under target/snapshot-clients/.
snapshot-clients:
	bash scripts/ensure-snapshot-clients.sh

# promtool, which tests/contrib_monitoring.rs runs on contrib/prometheus/
# (extracted from Debian's prometheus package to target/promtool/, without
# installing the package: see the script).
promtool:
	bash scripts/ensure-promtool.sh

# dpkg-deb, binutils, lintian, systemd-analyze, adduser: building and
# checking the Debian package (tests/deb_package.rs installs it: root).
deb-tools:
	bash scripts/ensure-deb-tools.sh

# The Debian package, from a release build: target/debian/ami2amqp_*.deb.
deb: build deb-tools
	bash scripts/build-deb.sh

# Doc tests and bench smoke runs first, so that the output ends with the
# summary of the main run.
# Every test target, plus the two in-process benches as quick smoke runs
# (the end-to-end benches start brokers' worth of load: `make bench` only).
# --no-fail-fast: run every test binary and list all failing ones at the end.
# --workspace: the crates under crates/ (ami-proto) too, not only ami2amqp.
test: rabbitmq facade-clients snapshot-clients promtool deb-tools
	$(CARGO) test --workspace --doc
	$(CARGO) test --bench parse --bench route
	$(CARGO) test --workspace --lib --bins --tests --no-fail-fast

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# One line per benchmark target (each is a [[bench]] in Cargo.toml).
bench: rabbitmq
	$(CARGO) bench --bench parse
	$(CARGO) bench --bench route
	$(CARGO) bench --bench bridge
	$(CARGO) bench --bench actions
	$(CARGO) bench --bench fleet

fuzz:
	bash scripts/fuzz.sh

demo: build rabbitmq facade-clients
	bash scripts/demo.sh

build:
	$(CARGO) build --release

clean:
	$(CARGO) clean

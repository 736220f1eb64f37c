# pose_node entry points. `make setup` is idempotent: a second run only checks stamp files.
#   make setup   create/update .venv (ROS 2 wheels, tf2_msgs/vision_msgs, torch, requirements)
#   make test    setup, then the whole test suite
#   make test-fast  setup, then the fast ROS-free core subset (pytest -m fast, under a minute)
#   make demo    setup, then the end-to-end demo
# Every ROS process started from here runs local-only: localhost discovery, its own
# ROS_DOMAIN_ID, shared-memory transport (pose_node/ros/local_env.py).
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
LOCAL_ROS := $(PYTHON) -m pose_node.ros.local_env --

# Set by a parent python from some venv; it would stop this venv's ROS bootstrap.
unexport _ROS_WHEELS_BOOTSTRAP_COMPLETE

.PHONY: setup test test-fast demo
setup:
	@VENV="$(VENV)" bash scripts/setup.sh

test: setup
	$(LOCAL_ROS) $(PYTHON) -m pytest -q test $(PYTEST_ARGS)

test-fast: setup
	$(LOCAL_ROS) $(PYTHON) -m pytest -q -m fast test $(PYTEST_ARGS)

demo: setup
	$(LOCAL_ROS) $(VENV)/bin/pose_demo

# One command each for a new user; both create .venv on first use.
.PHONY: setup demo test

setup:
	scripts/bootstrap

demo: setup
	.venv/bin/python -m sandbox.demo

test: setup
	scripts/test

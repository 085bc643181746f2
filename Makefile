# Two commands set everything up on a fresh machine:
#   make demo   - install, then run the main job on the embedded model (no download)
#   make test   - install, then run the test suite, then its fast part on the lowest declared versions (what CI runs)
#   make test-current / make test-min - either half
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# --no-compile: pip would byte-compile every installed module (about a minute of the 2.5 for torch, transformers,
# gradio...); the tests compile what they import, once (TEST_ENV).
PIP_FLAGS ?= -q --no-compile
# The suite runs in this many worker processes (pytest-xdist), one PyTorch thread each (tests/conftest.py); whole
# test files go to one worker, so a module's fixtures are built once. --no-loadscope-reorder: files are handed out
# in the order tests/conftest.py gives them (the longest first), not re-sorted by their number of tests (xdist's
# default), so a long file with few tests is not left to the end while the other worker idles.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
# The suite starts some forty Python processes (its workers, the CLI, bench and UI subprocesses). Where bytecode
# caching is off (PYTHONDONTWRITEBYTECODE, as on this workplace's machines) each would compile torch, diffusers and
# transformers from source again, about 10 s a process: the tests keep the bytecode of what they import in the
# venv's own folder (PYTHONPYCACHEPREFIX), written once, and the work tree stays clean.
TEST_ENV = env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/$(1)/pycache

.PHONY: install install-min demo test test-current test-min lint bench clean

install: $(VENV)/.installed

# uv installs the same versions as pip about five times faster (here 28 s against 98 s, most of it the CUDA
# libraries the torch wheel depends on): pip puts uv into the venv (seconds), .ci/uv_args.py hands it the indexes
# and constraint files pip is configured with. UV=no, or a uv that cannot be had, leaves the work to pip.
UV ?= yes
UV_BIN := $(VENV)/bin/uv
define pip_install
	if [ "$(UV)" = yes ] && $(PY) -m pip install $(PIP_FLAGS) -c constraints-dev.txt uv >/dev/null 2>&1; then \
		$(UV_BIN) pip install -q -p $(1) $$($(PY) .ci/uv_args.py) $(2); \
	else $(1) -m pip install $(PIP_FLAGS) --no-warn-conflicts $(2); fi
endef

$(VENV)/.installed: pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(call pip_install,$(PY),-c constraints-dev.txt -e '.[dev]')
	touch $@

# The lowest declared versions (constraints-min.txt) in a second environment, with the same torch as the first:
# uv links its cached copy in; pip takes the first one's (a .pth line puts that one's site-packages after its own,
# so its own older packages win) rather than a second copy of torch and its CUDA libraries.
VENV_MIN ?= .venv-min
PY_MIN := $(VENV_MIN)/bin/python
SITE_PACKAGES := import sysconfig; print(sysconfig.get_paths()["purelib"])
# The part of the suite that depends on the versions of what invedit imports: loading (SD, SDXL, the embedded fp16
# model), the attention processors and feature hooks every editor stands on, the schedulers, the tokenizer and text
# encoder, Pillow's image handling, the CLI (typer/click) in-process, and the reference UNet's numerics (the parity
# fixture's input latent and one null-text optimisation step, forward and backward). Not the whole-edit parity runs
# (512 px, 50 steps: their numerics are the UNet's, checked here one step at a time), the inversions' and editors'
# own maths (version-free; the full suite runs them), the subprocess tests (process handling, not library versions),
# the bench (its extras) or the UI (gradio). SD 3 / FLUX ask for newer diffusers and transformers than the floors
# (invedit.backbones.mmdit): here only their one-line refusal is tested.
MIN_TESTS := tests/test_sampling.py tests/test_direct_inversion.py tests/test_editors.py tests/test_p2p.py \
	tests/test_pix2pix_zero.py tests/test_models.py tests/test_images.py tests/test_cli.py \
	tests/test_embedded_model.py tests/test_sdxl.py tests/test_parity.py tests/test_attention.py \
	tests/test_masactrl.py tests/test_pnp.py tests/test_token_alignment.py tests/test_prompts.py \
	tests/test_outputs.py tests/test_flow_requirements.py
MIN_SKIP := not every_inversion_with_every_editor_from_the_cli and not edit_reproduces_reference \
	and not direct_offsets_match and not null_text_edit_reproduces and not editing_half_reproduces \
	and not keeps_the_background_better_than_ddim and not console_script_runs_as_a_process \
	and not sigterm_cleans_up and not closed_pipe_ends_quietly

install-min: $(VENV_MIN)/.installed

$(VENV_MIN)/.installed: pyproject.toml constraints-min.txt $(VENV)/.installed
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(PY) -c '$(SITE_PACKAGES)' > "$$($(PY_MIN) -c '$(SITE_PACKAGES)')/zz-torch-from-dev-venv.pth"
	$(call pip_install,$(PY_MIN),-c constraints-min.txt -e . pytest 'pytest-xdist>=3.8' peft)
	$(PY_MIN) .ci/check_versions.py constraints-min.txt
	touch $@

test-min: install-min
	$(call TEST_ENV,$(VENV_MIN)) $(PY_MIN) -m pytest $(PYTEST_PARALLEL) $(MIN_TESTS) -k "$(MIN_SKIP)"

demo: install
	$(VENV)/bin/invedit demo

test: test-current test-min

test-current: install
	$(call TEST_ENV,$(VENV)) $(PY) -m pytest $(PYTEST_PARALLEL)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/edit_speed.py

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache

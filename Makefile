# Two commands set everything up on a fresh machine:
#   make demo   - install, then run the main job on the embedded model (no download)
#   make test   - install, then run the test suite, then its fast part on the lowest declared versions (what CI runs)
#   make test-current / make test-min - either half
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
# The suite runs in this many worker processes (pytest-xdist), one PyTorch thread each (tests/conftest.py); whole
# test files go to one worker, so a module's fixtures are built once.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile

.PHONY: install install-min demo test test-current test-min lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints-dev.txt -e '.[dev]'
	touch $@

# The lowest declared versions (constraints-min.txt) in a second environment. It takes PyTorch from the first one
# (a .pth line puts that one's site-packages after its own, so its own older packages win): no second copy of
# torch and its CUDA libraries.
VENV_MIN ?= .venv-min
PY_MIN := $(VENV_MIN)/bin/python
SITE_PACKAGES := import sysconfig; print(sysconfig.get_paths()["purelib"])
# The fast part of the suite: every contract, every inversion and editor path, the CLI, loading (SD and SDXL),
# the embedded model and the reference parity of each editor, on tiny models; not the slower repeats of a path
# already covered (the SDXL CLI sweep beyond direct/ddim, the other parity configurations, the 4-scene
# direct-vs-ddim comparison), the bench (its extras) or the UI (gradio). SD 3 / FLUX ask for newer diffusers and
# transformers than the floors (invedit.backbones.mmdit): here only their one-line refusal is tested.
MIN_TESTS := tests/test_sampling.py tests/test_direct_inversion.py tests/test_inversions.py tests/test_editors.py \
	tests/test_p2p.py tests/test_pix2pix_zero.py tests/test_edict_ddpm.py tests/test_style_diffusion.py \
	tests/test_models.py tests/test_images.py tests/test_cli.py tests/test_cli_inversions.py \
	tests/test_embedded_model.py tests/test_sdxl.py tests/test_parity.py tests/test_editors_parity.py \
	tests/test_attention.py tests/test_masactrl.py tests/test_pnp.py tests/test_token_alignment.py \
	tests/test_prompts.py tests/test_outputs.py tests/test_architecture.py tests/test_flow_requirements.py
MIN_SKIP := not (every_inversion_with_every_editor_from_the_cli and not direct and not ddim) \
	and not bench_runs_on_sdxl and not options0 and not options2 and not null_text_edit_reproduces \
	and not (masactrl_reproduces_reference and ddim) and not pnp_with_ddim \
	and not editing_half_reproduces and not keeps_the_background_better_than_ddim

install-min: $(VENV_MIN)/.installed

$(VENV_MIN)/.installed: pyproject.toml constraints-min.txt $(VENV)/.installed
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(PY) -c '$(SITE_PACKAGES)' > "$$($(PY_MIN) -c '$(SITE_PACKAGES)')/zz-torch-from-dev-venv.pth"
	$(PY_MIN) -m pip install $(PIP_FLAGS) --no-warn-conflicts -c constraints-min.txt -e . pytest pytest-xdist peft
	$(PY_MIN) .ci/check_versions.py constraints-min.txt
	touch $@

test-min: install-min
	$(PY_MIN) -m pytest $(PYTEST_PARALLEL) $(MIN_TESTS) -k "$(MIN_SKIP)"

demo: install
	$(VENV)/bin/invedit demo

test: test-current test-min

test-current: install
	$(PY) -m pytest $(PYTEST_PARALLEL)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/edit_speed.py

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache

# The two commands of the README:
#   make book   - environment, data, every chapter with papermill (demo profile), then the HTML book
#   make test   - pytest over qpmlib, nbval over every chapter on the smoke profile, a checked book build
# Re-running either reuses what is already computed.

PROFILE ?= demo
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
VENDOR  := book/_vendor
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# npm packages that let the HTML render offline (pinned; fetched once with `npm pack`). plotly.js must be the
# version the plotly Python package draws for (tests/test_switch.py checks it).
MATHJAX_PKG      := mathjax@3.2.2
HTMLMANAGER_PKG  := @jupyter-widgets/html-manager@1.0.15
REQUIREJS_PKG    := requirejs@2.3.7
PLOTLY_PKG       := plotly.js-dist-min@4.1.1
VENDOR_PKGS      := $(MATHJAX_PKG) $(HTMLMANAGER_PKG) $(REQUIREJS_PKG) $(PLOTLY_PKG)
# The stamp names the packages, so that changing a pin fetches again.
VENDOR_STAMP     := $(VENDOR)/.complete-$(shell echo $(VENDOR_PKGS) | cksum | cut -d' ' -f1)

.PHONY: book test env vendor data run html clean help weights

help:
	@echo "make book [PROFILE=demo|smoke|paper|paper_code|paper_shapes] [JOBS=2] run every chapter and build the HTML book"
	@echo "make test                              unit tests + chapters under nbval (smoke) + book check"
	@echo "make weights [VARIANTS=standin_s14_reg] pretrain the stand-in backbones again (hours on a CPU; resumable)"
	@echo "make clean                             remove built books (keeps data, caches and results)"
	@echo "make runs [PROFILE=..] [EXECUTOR=local|slurm] [DRY_RUN=1] [WORKERS=2]   compute every run the book needs, no chapters"
	@echo "make export|import [PROFILE=..] [ARCHIVE=file.tar]          pack the book's runs / install such an archive"

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

vendor: $(VENDOR_STAMP)

# Only what the pages load: MathJax's TeX-to-HTML bundle and the parts it loads on demand (TeX extensions, fonts,
# the menu's renderers and accessibility tools), the widget manager's AMD bundle and its fonts, require.js, plotly.js.
$(VENDOR_STAMP):
	@rm -rf $(VENDOR).tmp && mkdir -p $(VENDOR).tmp/pack
	cd $(VENDOR).tmp/pack && npm pack --silent $(VENDOR_PKGS) >/dev/null
	cd $(VENDOR).tmp && for t in pack/*.tgz; do n=$$(basename $$t .tgz); mkdir -p x/$$n && tar -xzf $$t -C x/$$n; done
	mkdir -p $(VENDOR).tmp/out/mathjax/es5 $(VENDOR).tmp/out/html-manager/dist $(VENDOR).tmp/out/plotly
	cd $(VENDOR).tmp/x/mathjax-*/package/es5 && cp -r tex-chtml.js input output a11y ui sre adaptors ../../../../out/mathjax/es5/
	rm -rf $(VENDOR).tmp/out/mathjax/es5/input/mml* $(VENDOR).tmp/out/mathjax/es5/input/asciimath*
	cd $(VENDOR).tmp/x/jupyter-widgets-html-manager-*/package/dist && \
		cp embed-amd.js *.woff *.woff2 *.ttf *.eot *.svg ../../../../out/html-manager/dist/
	cp $(VENDOR).tmp/x/requirejs-*/package/require.js $(VENDOR).tmp/out/require.js
	cp $(VENDOR).tmp/x/plotly.js-dist-min-*/package/plotly.min.js $(VENDOR).tmp/out/plotly/plotly.min.js
	@touch $(VENDOR).tmp/out/$(notdir $(VENDOR_STAMP))
	@rm -rf $(VENDOR) && mv $(VENDOR).tmp/out $(VENDOR) && rm -rf $(VENDOR).tmp

data: env
	$(PY) data_scripts/make_synthbirds.py --profile $(PROFILE)

# Chapters executed at once (they start in _toc.yml order and read the runs that `make runs` stored; a chapter's
# kernel is mostly single-threaded, so two at a time use both cores of a laptop).
JOBS ?= 2
run: env data
	$(PY) -m qpmlib.book.runner run --profile $(PROFILE) --jobs $(JOBS)

html: env vendor
	$(PY) -m qpmlib.book.runner build --profile $(PROFILE)

book: env vendor data runs run html

# pytest-xdist workers (0: run in this process). --dist loadfile keeps each file, so each chapter's nbval cells and
# their kernel, in one worker; --no-loadscope-reorder keeps the files in collection order, which tests/conftest.py
# begins with the long Slurm files.
TEST_WORKERS ?= 2
test: env vendor
	$(MAKE) --no-print-directory book PROFILE=smoke
	QPMLIB_PROFILE=smoke QPMLIB_BOOK_PROFILE=smoke QPMLIB_REQUIRE_BOOK=1 \
		$(PY) -m pytest tests chapters --nbval-lax -p no:cacheprovider \
		-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The stand-in backbones are committed under weights/ with their provenance cards; this rebuilds them (all, or
# VARIANTS="standin_s14_reg standin_t14_reg"). Interrupted runs resume from their checkpoints.
VARIANTS ?=
weights: env
	$(PY) data_scripts/pretrain_backbone.py $(if $(strip $(VARIANTS)),--variant $(VARIANTS),--all)

clean:
	rm -rf book/_build

# The book's runs without its chapters (qpmlib.book.store): compute them locally or as Slurm jobs, then pack them
# into one archive that renders the book on another machine (make import, then make book) without training.
.PHONY: runs export import
EXECUTOR ?=
DRY_RUN  ?=
ifneq ($(EXECUTOR),)
export QPMLIB_EXECUTOR := $(EXECUTOR)   # also for the chapters of `make book EXECUTOR=slurm`
endif
ARCHIVE  ?= results-$(PROFILE).tar

runs: env $(if $(filter 1,$(DRY_RUN)),,data)
	$(PY) -m qpmlib.book.store runs --profile $(PROFILE) $(if $(EXECUTOR),--executor $(EXECUTOR)) \
		$(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(WORKERS),--workers $(WORKERS))

export: env
	$(PY) -m qpmlib.book.store export --profile $(PROFILE) --archive $(ARCHIVE)

import: env
	$(PY) -m qpmlib.book.store import --archive $(ARCHIVE)

# hq: install, run and test a job manager for Unix clusters.   `make help` lists the targets.
#
# PYTHON builds the virtualenv. Debian's /usr/bin/python3 is the default because every account
# must be able to run the installation's Python (the machine's default python3 may live in a
# directory other accounts cannot enter).
PYTHON ?= /usr/bin/python3
VE := hqVE
STAMP := $(VE)/.hq-installed
COMPILED := $(VE)/.hq-compiled
PIP := $(VE)/bin/pip --disable-pip-version-check
PYTEST_ARGS ?=
# the documentation: read every page again (-E: the reference pages come from hq's code, which
# Sphinx does not watch), and any warning fails the build after reporting all of them
SPHINX_BUILD := $(VE)/bin/sphinx-build -E -W --keep-going -q
# make runs each recipe line with sh; everything it creates is readable by every account
UMASK := umask 022
# shell completion scripts (click's) for the user-facing programs: hq.bash, hq.zsh, fish/PROG.fish
COMPLETION := doc/completion
COMPLETED := hq-submit hq-client hq-admin hq-dbadmin
# `make frozen`: scripts/makeFreezedVersion.py's --programs and --form
FROZEN_PROGRAMS ?= hq-exec-server
FROZEN_FORM ?= onedir

.DEFAULT_GOAL := all
.DELETE_ON_ERROR:
.PHONY: FORCE all help run sql sql-start sql-stop sql-status test lint doc system-deps clean frozen

all: $(STAMP) $(COMPILED) $(COMPLETION)/hq.bash .hqrc ## virtualenv hqVE/ with the pinned packages and hq, shell completion, .hqrc (the default)

# hq's bytecode, compiled here once: the other accounts cannot write hq/__pycache__, and
# without it each of their commands would compile hq's modules again (~25 ms a call).
$(COMPILED): $(STAMP) $(shell find hq -name '*.py' 2>/dev/null)
	@$(UMASK); $(VE)/bin/python -m compileall -q -j 0 hq >/dev/null && touch $@

# click writes each script when the program runs with _PROG_COMPLETE=SHELL_source; .hqrc
# sources the bash one for bash users (doc/user-guide.md: zsh and fish)
$(COMPLETION)/hq.bash: $(COMPILED)
	@$(UMASK); set -e; mkdir -p $(COMPLETION)/fish; \
	for shell in bash zsh fish; do \
	    rm -f $(COMPLETION)/hq.$$shell.tmp; \
	    for prog in $(COMPLETED); do \
	        var=_$$(echo $$prog | tr a-z- A-Z_)_COMPLETE; \
	        env $$var=$${shell}_source HQPATH=$$(pwd -P) $(VE)/bin/python -P -m hq.cli.$${prog#hq-} \
	            > $(COMPLETION)/$$prog.$$shell.tmp; \
	        if [ $$shell = fish ]; then mv -f $(COMPLETION)/$$prog.fish.tmp $(COMPLETION)/fish/$$prog.fish; \
	        else cat $(COMPLETION)/$$prog.$$shell.tmp >> $(COMPLETION)/hq.$$shell.tmp; \
	            rm -f $(COMPLETION)/$$prog.$$shell.tmp; fi; \
	    done; \
	    if [ $$shell != fish ]; then mv -f $(COMPLETION)/hq.$$shell.tmp $(COMPLETION)/hq.$$shell; fi; \
	done

frozen: all ## self-contained programs in var/frozen/ (FROZEN_PROGRAMS=hq-exec-server, FROZEN_FORM=onedir)
	@$(UMASK); $(VE)/bin/python scripts/makeFreezedVersion.py --programs $(FROZEN_PROGRAMS) --form $(FROZEN_FORM)

$(STAMP): hqConf/requirements.txt pyproject.toml
	@$(UMASK); set -e; \
	if [ ! -x $(VE)/bin/python ]; then \
	    $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || scripts/install-system-deps.sh venv; \
	    echo "creating $(VE) with $(PYTHON)"; \
	    $(PYTHON) -m venv $(VE); \
	fi; \
	$(PIP) install -q -r hqConf/requirements.txt; \
	$(PIP) install -q --no-deps -e .; \
	touch $@

.hqrc: FORCE ## shell settings for this installation: `. ./.hqrc` (HQPATH, HQ_VE_PATH, PATH, MANPATH)
	@$(UMASK); set -e; \
	hqpath=$$(pwd -P); \
	case $$hqpath in *[!A-Za-z0-9/._+-]*) echo "make: the installation path must not contain spaces or quotes: $$hqpath" >&2; exit 1;; esac; \
	{ echo "# hq settings for this installation; load with: . $$hqpath/.hqrc"; \
	  echo "HQPATH=$$hqpath"; \
	  echo 'HQ_VE_PATH=$$HQPATH/hqVE'; \
	  echo 'case ":$$PATH:" in *":$$HQPATH/bin:"*) ;; *) PATH=$$HQPATH/bin:$$PATH ;; esac'; \
	  echo 'export HQPATH HQ_VE_PATH PATH'; \
	  echo 'case ":$${MANPATH-}:" in *":$$HQPATH/doc/man:"*) ;; *) MANPATH=$$HQPATH/doc/man:$${MANPATH-} ;; esac'; \
	  echo 'export MANPATH'; \
	  echo '# completion for bash (other shells: doc/user-guide.md)'; \
	  echo 'if [ -n "$${BASH_VERSION-}" ] && [ -r "$$HQPATH/$(COMPLETION)/hq.bash" ]; then . "$$HQPATH/$(COMPLETION)/hq.bash"; fi'; } > $@.tmp; \
	if cmp -s $@.tmp $@; then rm -f $@.tmp; else \
	    mv -f $@.tmp $@; echo "wrote .hqrc: '. $$hqpath/.hqrc' puts hq's commands on your PATH"; fi

FORCE:

run: all ## demo on this machine: SQLite, this host, hq-server, a 20-task job array
	@scripts/demo.sh

sql: ## private MariaDB instance in var/mariadb, database hq, etc/hq-db.cfg (run `make` first)
	@$(UMASK); scripts/hq-sql.sh setup

sql-start: ## start the private MariaDB instance (after `make sql`)
	@$(UMASK); scripts/hq-sql.sh start

sql-stop: ## stop the private MariaDB instance
	@$(UMASK); scripts/hq-sql.sh stop

sql-status: ## is the private MariaDB instance running?
	@scripts/hq-sql.sh status

system-deps: ## Debian packages for the tests: MariaDB, openssh-server, iproute2, chromium (root installs them)
	@scripts/install-system-deps.sh

doc: $(STAMP) ## the documentation: web pages in doc/html/, man pages in doc/man/ (warnings are errors)
	@$(UMASK); set -e; rm -rf doc/html doc/man doc/_build; \
	$(SPHINX_BUILD) -b html -d doc/_build/doctrees doc doc/html; \
	$(SPHINX_BUILD) -b man -d doc/_build/doctrees doc doc/man; \
	echo "built doc/html/index.html and doc/man/ (man -M doc/man hq-submit)"

test: all system-deps doc ## run the test suite (PYTEST_ARGS=... passes options to pytest)
	@$(UMASK); $(VE)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and the import-linter contracts
	$(VE)/bin/ruff check .
	$(VE)/bin/lint-imports

clean: ## remove the virtualenv, its stamp and the built documentation (never var/ or etc/)
	rm -rf $(VE) $(STAMP) doc/html doc/man doc/_build $(COMPLETION)

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_.-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

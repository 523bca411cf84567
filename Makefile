# event_store — PGXS build
EXTENSION   = event_store
# the version lives in one place: default_version in event_store.control
# (the Debian package and META.json take it from there: `make deb`, `make dist`)
EXTVERSION := $(shell sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" $(dir $(lastword $(MAKEFILE_LIST)))$(EXTENSION).control)
ifeq ($(EXTVERSION),)
$(error no default_version in $(EXTENSION).control)
endif

MODULE_big  = event_store
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard $(srcdir)/src/*.c)))

# the install script is built from one fragment per subsystem, in the order
# of their numbers (sql/install/NN_<subsystem>.sql)
INSTALL_PARTS = $(sort $(wildcard $(srcdir)/sql/install/*.sql))
DATA_built  = event_store--$(EXTVERSION).sql
# earlier versions' install scripts, frozen, and the upgrade scripts
DATA        = sql/event_store--0.1.0.sql sql/event_store--0.1.0--0.2.0.sql \
              sql/event_store--0.2.0.sql sql/event_store--0.2.0--0.3.0.sql

PG_CONFIG  ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
# `make ES_WERROR=1`: every warning is an error (CI builds this way)
ifneq ($(filter-out 0,$(ES_WERROR)),)
PG_CFLAGS  += -Werror
endif

# pg_regress suite (sql/ + expected/), run against its own throwaway
# instance with the library preloaded: `make installcheck`.
REGRESS      = setup append append_errors read_stream read_results read_all immutability preload aggregates upcasting projections sagas saga_loop lifecycle security callbacks read_only stream_ids projection_cancel subscriptions projection_partitions correlation saga_versions saga_operators saga_timers saga_limits saga_circuits large_stores archive subscription_map batch_insert subscription_moves batch_errors
REGRESS_OPTS = --temp-config=$(srcdir)/test/event_store.conf --temp-instance=./tmp_check

# isolation specs: `make isolationcheck`
ISOLATION_SPECS = $(basename $(notdir $(wildcard $(srcdir)/test/isolation/specs/*.spec)))
ISOLATION_OPTS = --temp-config=$(srcdir)/test/event_store.conf --temp-instance=./tmp_check_iso \
                 --inputdir=$(srcdir)/test/isolation --outputdir=./test/isolation/output_iso

# TAP scripts (test/t/*.pl, PostgreSQL::Test::Cluster nodes that each script
# configures itself): `make tapcheck`, or `make tapcheck ES_TAP_FILES=test/t/070_upgrade.pl`
ES_TAP_FILES ?= $(sort $(wildcard $(srcdir)/test/t/*.pl))

# pgTAP files (test/pgtap/*.sql), run by pg_prove on a throwaway cluster
# under ./tmp_pgtap with test/event_store.conf, a fresh database per file:
# `make pgtapcheck`, or `make pgtapcheck ES_PGTAP_FILES=test/pgtap/core.sql`
ES_PGTAP_FILES ?= $(sort $(wildcard $(srcdir)/test/pgtap/*.sql))
ES_PGTAP_PORT ?= 5511

EXTRA_CLEAN = tmp_check tmp_check_iso tmp_tap tmp_pgtap test/isolation/output_iso results regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on every header (PGXS tracks no header dependencies)
$(OBJS): $(wildcard $(srcdir)/src/*.h)

event_store--$(EXTVERSION).sql: $(INSTALL_PARTS)
	cat $^ > $@

pg_isolation_regress = $(dir $(PGXS))../../src/test/isolation/pg_isolation_regress

isolationcheck:
	@mkdir -p test/isolation/output_iso
	$(pg_isolation_regress) --bindir='$(bindir)' $(ISOLATION_OPTS) $(ISOLATION_SPECS)

# (logs: tmp_tap/tmp_check/log)
tapcheck:
	rm -rf tmp_tap
	@mkdir -p tmp_tap
	TESTDIR='$(CURDIR)/tmp_tap' top_builddir='$(CURDIR)/tmp_tap' \
	PATH='$(bindir)':"$$PATH" \
	PERL5LIB='$(top_builddir)/src/test/perl:$(abspath $(srcdir))/test/perl'"$${PERL5LIB:+:$$PERL5LIB}" \
	PG_REGRESS='$(top_builddir)/src/test/regress/pg_regress' \
	prove --norc --nocolor $(PROVE_FLAGS) $(ES_TAP_FILES)

# (server log: tmp_pgtap/data.log; the cluster is stopped whatever happens)
pgtapcheck:
	PG_CONFIG='$(PG_CONFIG)' ES_PGTAP_PORT='$(ES_PGTAP_PORT)' \
	bash $(srcdir)/scripts/pgtapcheck.sh '$(CURDIR)/tmp_pgtap' $(ES_PGTAP_FILES)

# every suite, one after the other, each on servers of its own; fails when
# any suite failed
check-all:
	@rc=0; for t in installcheck isolationcheck tapcheck pgtapcheck; do \
		$(MAKE) --no-print-directory $$t || rc=1; \
	done; exit $$rc

# packages, built from a clean copy of the tree under build/ (see
# scripts/package.sh): `make deb` (the Debian package
# postgresql-15-event-store, checked by lintian), `make dist` (the PGXN zip);
# both first check that META.json carries the version of event_store.control
# (`make metacheck`)
deb dist metacheck:
	bash $(srcdir)/scripts/package.sh $@

.PHONY: isolationcheck tapcheck pgtapcheck check-all deb dist metacheck

# the router extension (router/, SQL only) is built and installed with this
# one; `make -C router install` installs it alone
all: router-all
install: router-install
uninstall: router-uninstall
clean: router-clean
router-all router-install router-uninstall router-clean:
	$(MAKE) -C $(srcdir)/router PG_CONFIG='$(PG_CONFIG)' $(patsubst router-%,%,$@)
.PHONY: router-all router-install router-uninstall router-clean

# event_store — PGXS build
EXTENSION   = event_store
EXTVERSION  = 0.3.0

MODULE_big  = event_store
OBJS        = src/event_store.o src/catalog.o src/position.o src/append.o src/read.o src/upcast.o src/snapshot.o src/projection.o src/worker.o src/saga.o src/args.o src/security.o src/lifecycle.o

DATA_built  = event_store--$(EXTVERSION).sql
# earlier versions' install scripts, frozen, and the upgrade scripts
DATA        = sql/event_store--0.1.0.sql sql/event_store--0.1.0--0.2.0.sql \
              sql/event_store--0.2.0.sql sql/event_store--0.2.0--0.3.0.sql

PG_CONFIG  ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers

# pg_regress suite (sql/ + expected/), run against its own throwaway
# instance with the library preloaded: `make installcheck`.
REGRESS      = setup append append_errors read_stream read_all immutability preload aggregates upcasting projections sagas lifecycle security callbacks read_only stream_ids projection_cancel
REGRESS_OPTS = --temp-config=$(srcdir)/test/event_store.conf --temp-instance=./tmp_check

# isolation specs: `make isolationcheck`
ISOLATION_SPECS = $(basename $(notdir $(wildcard $(srcdir)/test/isolation/specs/*.spec)))
ISOLATION_OPTS = --temp-config=$(srcdir)/test/event_store.conf --temp-instance=./tmp_check_iso \
                 --inputdir=$(srcdir)/test/isolation --outputdir=./test/isolation/output_iso

EXTRA_CLEAN = tmp_check tmp_check_iso test/isolation/output_iso results regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on every header (PGXS tracks no header dependencies)
$(OBJS): $(wildcard $(srcdir)/src/*.h)

event_store--$(EXTVERSION).sql: sql/event_store.sql
	cp $< $@

pg_isolation_regress = $(dir $(PGXS))../../src/test/isolation/pg_isolation_regress

isolationcheck:
	@mkdir -p test/isolation/output_iso
	$(pg_isolation_regress) --bindir='$(bindir)' $(ISOLATION_OPTS) $(ISOLATION_SPECS)

.PHONY: isolationcheck

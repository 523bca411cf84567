\set sid random(1, 10000)
SELECT event_store.append('ryw-' || :sid, '{"type":"RywEvent","data":{"n":1}}');
WITH w AS MATERIALIZED (
    SELECT event_store.wait_for_projection('bench_ryw', event_store.last_appended_position(), '5 seconds') AS ok)
INSERT INTO bench.ryw_waits SELECT :parts, ok, clock_timestamp() - statement_timestamp() FROM w;

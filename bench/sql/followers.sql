-- followers case: two followers page read_all from a start cursor, recording
-- every position they get in bench.seen_<k> in the same transaction as they
-- advance their cursor (bench.follower), until the harness says the writers
-- are done and they have drained to head_position().
CREATE TABLE IF NOT EXISTS bench.follow_ctl (done boolean NOT NULL);
CREATE TABLE IF NOT EXISTS bench.follower (k int PRIMARY KEY, pos bigint NOT NULL, pages bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS bench.seen_1 (position bigint PRIMARY KEY, dups int NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS bench.seen_2 (position bigint PRIMARY KEY, dups int NOT NULL DEFAULT 0);

CREATE OR REPLACE PROCEDURE bench.follow(k int)
LANGUAGE plpgsql AS $$
DECLARE
    cur bigint;
    m bigint;
    n bigint;
BEGIN
    SELECT pos INTO cur FROM bench.follower f WHERE f.k = follow.k;
    LOOP
        -- a duplicate is counted, not raised, so that the check can report it
        EXECUTE format($q$
            WITH ins AS (
                INSERT INTO bench.seen_%s AS s (position)
                SELECT global_position FROM event_store.read_all($1, 1000)
                ON CONFLICT (position) DO UPDATE SET dups = s.dups + 1
                RETURNING position)
            SELECT max(position), count(*) FROM ins$q$, k)
          INTO m, n USING cur;
        IF n > 0 THEN
            cur := greatest(cur, m);
            UPDATE bench.follower f SET pos = cur, pages = pages + 1 WHERE f.k = follow.k;
            COMMIT;
        ELSE
            COMMIT;
            EXIT WHEN (SELECT done FROM bench.follow_ctl) AND cur >= event_store.head_position();
            PERFORM event_store.wait_for_events(cur, '100 milliseconds');
            COMMIT;
        END IF;
    END LOOP;
END
$$;

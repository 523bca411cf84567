\set pos random(0, :maxpos)
SELECT * FROM bench.plain_events WHERE global_position > :pos ORDER BY global_position LIMIT 1000;

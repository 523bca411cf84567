\set pos random(0, :maxpos)
SELECT * FROM event_store.read_all(:pos, 1000);

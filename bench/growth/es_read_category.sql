\set pos random(0, :catmax)
SELECT * FROM event_store.read_category('order', :pos, 1000);

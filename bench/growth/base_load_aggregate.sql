-- the newest snapshot and the events after it, folded by the same reducer
SELECT bench.bare_load('aggsnap-1');

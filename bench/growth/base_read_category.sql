-- the category index's order and bounds written out (a row comparison), so
-- that the planner takes that index rather than the primary key with a
-- filter (which it prefers on wide rows, and which is slower): the rows are
-- those of category 'order' after :pos, in position order
\set pos random(0, :catmax)
SELECT * FROM bench.plain_events
 WHERE (split_part(stream_id, '-', 1) COLLATE "C", global_position) > ('order', :pos)
   AND split_part(stream_id, '-', 1) COLLATE "C" <= 'order'
 ORDER BY split_part(stream_id, '-', 1) COLLATE "C", global_position LIMIT 1000;

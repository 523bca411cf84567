-- the statement Message DB's clients send for a category page
\set pos random(1, :mdbcatmax)
SELECT * FROM get_category_messages('order'::varchar, :pos::bigint, 1000::bigint, NULL::varchar, NULL::bigint, NULL::bigint, NULL::varchar);

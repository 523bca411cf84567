// peers.sh helper: Emmett's own client creates its schema (migrate) and,
// with "append N STREAM", appends one batch of N events the way
// appendToStream does, so that the server log shows the SQL it sends.
// Usage: node emmett.mjs CONNECTION_STRING migrate
//        node emmett.mjs CONNECTION_STRING append N STREAM
import { getPostgreSQLEventStore } from '@event-driven-io/emmett-postgresql';

const [conn, what, n, stream] = process.argv.slice(2);
const store = getPostgreSQLEventStore(conn);
try {
	if (what === 'migrate') {
		await store.schema.migrate();
	} else if (what === 'append') {
		const events = [];
		for (let i = 1; i <= Number(n); i++)
			events.push({ type: 'Event1', data: { n: i }, metadata: { source: 'peers' } });
		await store.appendToStream(stream, events);
	} else {
		throw new Error(`unknown command ${what}`);
	}
} finally {
	await store.close();
}

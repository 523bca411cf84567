/*
 * archive.h
 *	  archive_events(): old events to cheaper storage and back.
 */
#ifndef ES_ARCHIVE_H
#define ES_ARCHIVE_H

/* SQL: event_store.archive_events(before_position bigint, tablespace name) */

#endif							/* ES_ARCHIVE_H */

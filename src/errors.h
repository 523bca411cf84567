/*
 * errors.h
 *	  The SQLSTATEs of event_store's own error class "SE".
 *
 * The SQL standard reserves classes starting with 0-4 and A-H; a class that
 * starts with a letter from I to Z is free for applications and extensions.
 */
#ifndef EVENT_STORE_ERRORS_H
#define EVENT_STORE_ERRORS_H

#include "utils/elog.h"

/* SE001: the stream is not at the version the caller expected */
#define ERRCODE_ES_WRONG_EXPECTED_VERSION	MAKE_SQLSTATE('S','E','0','0','1')

/* SE002: an event id the caller supplied already exists elsewhere */
#define ERRCODE_ES_DUPLICATE_EVENT_ID		MAKE_SQLSTATE('S','E','0','0','2')

/* SE003: the stream was deleted (delete_stream / purge_stream) */
#define ERRCODE_ES_STREAM_DELETED			MAKE_SQLSTATE('S','E','0','0','3')

/* SE004: the category is imported from another database: read-only here */
#define ERRCODE_ES_CATEGORY_IMPORTED		MAKE_SQLSTATE('S','E','0','0','4')

/*
 * The hint of a permission error (42501) on one of event_store's functions
 * or tables: the privilege recipe's roles
 */
#define ES_PRIVILEGES_HINT \
	"Grant the role event_store_reader, event_store_writer or event_store_operator, " \
	"the roles of event_store's privilege recipe examples/privileges.sql."

#endif							/* EVENT_STORE_ERRORS_H */

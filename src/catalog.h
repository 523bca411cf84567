/*
 * catalog.h
 *	  The extension's own relations: names, the layout of an event, the
 *	  OIDs cached per backend, the schema version, and one-value probes of
 *	  the events table's indexes.
 */
#ifndef ES_CATALOG_H
#define ES_CATALOG_H

#include "access/attnum.h"
#include "access/sdir.h"
#include "access/skey.h"
#include "utils/snapshot.h"

#define ES_SCHEMA_NAME			"event_store"

/* longest stream id, name, event type or category (bytes): index keys */
#define ES_MAX_NAME_BYTES		1024
#define ES_EVENTS_TABLE			"events"
#define ES_EVENTS_POSITION_IDX	"events_pkey"
#define ES_EVENTS_STREAM_IDX	"events_stream_id_stream_version_key"
#define ES_EVENTS_EVENT_ID_IDX	"events_event_id_key"
#define ES_EVENTS_CATEGORY_IDX	"events_category_position_idx"
/* read_correlated: runs of one correlation id in a batch (0.3 on) */
#define ES_CORRELATIONS_TABLE	"correlations"
#define ES_CORRELATIONS_PKEY	"correlations_pkey"
/* the version of each stream's newest archived event (0.3 on) */
#define ES_ARCHIVED_STREAMS_TABLE	"archived_streams"
#define ES_ARCHIVED_STREAMS_PKEY	"archived_streams_pkey"
/* the durable high-water mark of global positions (a sequence) */
#define ES_POSITION_MARK_SEQ	"position_mark"

/* Attribute numbers of event_store.events (same order as event_store.event) */
#define Anum_es_global_position	1
#define Anum_es_stream_id		2
#define Anum_es_stream_version	3
#define Anum_es_event_id		4
#define Anum_es_event_type		5
#define Anum_es_data			6
#define Anum_es_metadata		7
#define Anum_es_schema_version	8
#define Anum_es_recorded_at		9
#define Natts_es_event			9

/* Attribute numbers of event_store.correlations (a run) */
#define Anum_es_run_correlation_id	1
#define Anum_es_run_first_position	2
#define Anum_es_run_last_position	3
#define Natts_es_run				3

/* Attribute numbers of event_store.archived_streams */
#define Anum_es_archived_stream_id		1
#define Anum_es_archived_stream_version	2

/*
 * Versions of the installed schema the library serves (until ALTER
 * EXTENSION event_store UPDATE brings the schema to the library's version)
 */
#define ES_SCHEMA_0_1	1		/* no owners, grants or stream metadata */
#define ES_SCHEMA_0_2	2		/* registrations record their owners */
#define ES_SCHEMA_0_3	3		/* ... and their search_path; position mark */

/* OIDs of the extension's own relations, cached per backend */
typedef struct EsCatalog
{
	int			schema_version; /* ES_SCHEMA_* */
	Oid			extension_oid;	/* pg_extension row of event_store */
	Oid			namespace_oid;
	Oid			events_relid;
	Oid			position_idx;
	Oid			stream_idx;
	Oid			event_id_idx;
	Oid			category_idx;
	Oid			correlations_relid; /* runs, 0.3 on (InvalidOid before the
									 * update) */
	Oid			correlations_idx;	/* their primary key */
	Oid			event_type_oid;	/* composite type event_store.event */
	Oid			event_type_relid;	/* its pg_class entry */
	bool		stored_rows_are_events; /* events' rows have the type's layout */
	Oid			metadata_relid;	/* stream_metadata (0.2 on) */
	Oid			metadata_idx;	/* its primary key */
	Oid			grants_relid;	/* category_grants (0.2 on) */
	Oid			upcasters_relid;
	Oid			position_mark_relid;	/* position_mark (0.3 on) */
	bool		saga_versions;	/* saga types have versions (0.3 on) */
	Oid			archive_relid;	/* archived_ranges (0.3 on) */
	Oid			archived_streams_relid; /* archived_streams (0.3 on) */
	Oid			archived_streams_idx;	/* its primary key */
} EsCatalog;

extern const EsCatalog *EsGetCatalog(void);
extern const EsCatalog *EsCatalogRecheckCorrelations(const EsCatalog *cat);

extern bool EsFirstEventValue(const EsCatalog *cat, Oid index_oid,
							  Snapshot snapshot, ScanKey keys, int nkeys,
							  ScanDirection direction, AttrNumber attno,
							  Datum *value);
extern bool EsFirstEventValues(const EsCatalog *cat, Oid index_oid,
							   Snapshot snapshot, ScanKey keys, int nkeys,
							   ScanDirection direction, int natts,
							   const AttrNumber *attnos, Datum *values);
extern int64 EsLatestStreamVersion(const EsCatalog *cat, text *stream_id,
								   Snapshot snapshot);
extern int64 EsArchivedStreamVersion(const EsCatalog *cat, text *stream_id,
									 Snapshot snapshot);

#endif							/* ES_CATALOG_H */

/*
 * subscription.h
 *	  Subscriptions: consumer groups on the log.
 */
#ifndef ES_SUBSCRIPTION_H
#define ES_SUBSCRIPTION_H

/* the most partitions a subscription may have */
#define ES_MAX_PARTITIONS	1024

extern int32 EsStreamPartition(text *stream_id, int n);
extern void EsSubscriptionsChanged(void);

#endif							/* ES_SUBSCRIPTION_H */

/* gw.h - the gateway's context: the event base and the config in force.
 *
 * One instance, owned by main.c. Every module's init function takes it and
 * keeps the pointer (never a copy of the base or the config): a reload
 * swaps gw->cfg in this one place, so every module reads the config in
 * force from then on. What must outlive a reload holds its own reference
 * (config_ref): each service holds the config its svc_config lives in,
 * and keeps it while retired, until it is freed (service.c). */
#ifndef SG_GW_H
#define SG_GW_H

struct config;
struct event_base;

struct gw {
	struct event_base *base;
	struct config *cfg;   /* in force; one reference, owned by main.c */
};

#endif

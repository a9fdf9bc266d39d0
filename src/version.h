/* version.h - the release of slurmgate. */
#ifndef SG_VERSION_H
#define SG_VERSION_H
#define SLURMGATE_VERSION "0.1.0"
#endif

/* shquote.h - quoting for the remote shell, in one place.
 *
 * ssh hands its command to the login node's shell as one string. Every
 * argument goes through sh_quote exactly once, so that a value holding
 * spaces, quotes, ';' or '$()' arrives as the same single argument. */
#ifndef SG_SHQUOTE_H
#define SG_SHQUOTE_H

/* 'arg' with each ' written as '\'' (malloc'd). */
char *sh_quote(const char *arg);
/* The quoted arguments of argv joined by spaces (malloc'd). */
char *sh_join(char *const argv[]);

#endif

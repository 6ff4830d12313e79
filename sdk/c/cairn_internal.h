/* What the kit's own files share; not for adapters. */
#ifndef CAIRN_INTERNAL_H
#define CAIRN_INTERNAL_H

#include "cairn.h"

#include <stdarg.h>

/* malloc, realloc and strdup that abort with a message when memory runs
 * out (the host then reports the trap with that message). */
void *cairn_alloc(size_t size);
void *cairn_realloc(void *p, size_t size);
char *cairn_strdup(const char *s);
char *cairn_strndup(const char *s, size_t n);
/* printf into a new string. */
char *cairn_format(const char *format, ...) __attribute__((format(printf, 1, 2)));
char *cairn_vformat(const char *format, va_list ap);

/* A config parsed from JSON text; NULL with `*error` (malloc'd) set when
 * it is not a JSON object. `what` names it in messages. */
cairn_config_t *cairn_config_parse(const char *text, size_t len, const char *what, char **error);
/* `base` with every key of `set` applied over it. */
cairn_config_t *cairn_config_merged(const cairn_config_t *base, const cairn_config_t *set,
                                    const char *what);
void cairn_config_free(cairn_config_t *config);

#endif

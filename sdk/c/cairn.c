/*
 * Cairn's C kit: the exports wit-bindgen's bindings expect, calling the
 * adapter's `cairn_*` functions, and the `cairn_*` calls an adapter makes,
 * over the generated imports. The ownership rules of the generated
 * bindings (who frees an argument, who allocates a result) live here and
 * only here.
 */
#include "cairn_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The generated names are long; these name the interfaces. */
#define TYPES(name) cairn_adapter_0_1_0_types_##name
#define ARCHIVE(name) cairn_adapter_0_1_0_archive_##name
#define SNAPSHOT(name) cairn_adapter_0_1_0_snapshot_##name
#define FS(name) cairn_adapter_0_1_0_fs_##name
#define LOG(name) cairn_adapter_0_1_0_log_##name
#define PROCESS(name) cairn_adapter_0_2_0_process_##name
#define SECRETS(name) cairn_adapter_0_2_0_secrets_##name
#define CONFIGURATION(name) exports_cairn_adapter_0_3_0_configuration_##name
/* ... and their constants. */
#define TYPES_C(name) CAIRN_ADAPTER_0_1_0_TYPES_##name
#define LOG_C(name) CAIRN_ADAPTER_0_1_0_LOG_##name
#define PROCESS_C(name) CAIRN_ADAPTER_0_2_0_PROCESS_##name

typedef TYPES(adapter_error_t) wit_error_t;

/* ---- Memory and strings ---------------------------------------------------- */

static void out_of_memory(size_t size) {
    fprintf(stderr, "cairn kit: out of memory allocating %zu bytes\n", size);
    abort();
}

void *cairn_alloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (p == NULL) out_of_memory(size);
    return p;
}

void *cairn_realloc(void *p, size_t size) {
    void *q = realloc(p, size ? size : 1);
    if (q == NULL) out_of_memory(size);
    return q;
}

char *cairn_strndup(const char *s, size_t n) {
    char *d = cairn_alloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *cairn_strdup(const char *s) { return cairn_strndup(s, strlen(s)); }

char *cairn_vformat(const char *format, va_list ap) {
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, format, ap);
    if (n < 0) {
        va_end(again);
        return cairn_strdup(format);
    }
    char *s = cairn_alloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, format, again);
    va_end(again);
    return s;
}

char *cairn_format(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *s = cairn_vformat(format, ap);
    va_end(ap);
    return s;
}

/* A borrowed view of a C string, for a generated import (which copies). */
static adapter_string_t view(const char *s) {
    adapter_string_t w;
    w.ptr = (uint8_t *)s;
    w.len = strlen(s);
    return w;
}

/* A string the host returned, as a C string the caller owns; the host's
 * copy is freed. A NUL byte inside (a C string cannot hold one) ends it. */
static char *take(adapter_string_t *s) {
    char *c = cairn_strndup((const char *)s->ptr, s->len);
    adapter_string_free(s);
    return c;
}

/* A C string as a string the generated code frees (a result or argument
 * handed to the host). */
static adapter_string_t give(const char *s) {
    adapter_string_t w;
    adapter_string_dup(&w, s);
    return w;
}

static char **take_strings(adapter_list_string_t *list) {
    char **out = cairn_alloc((list->len + 1) * sizeof *out);
    for (size_t i = 0; i < list->len; i++) {
        out[i] = cairn_strndup((const char *)list->ptr[i].ptr, list->ptr[i].len);
    }
    out[list->len] = NULL;
    adapter_list_string_free(list);
    return out;
}

void cairn_strings_free(char **strings) {
    if (strings == NULL) return;
    for (char **s = strings; *s != NULL; s++) free(*s);
    free(strings);
}

/* ---- Errors ---------------------------------------------------------------- */

bool cairn_fail(cairn_error_t *err, cairn_error_kind_t kind, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *message = cairn_vformat(format, ap);
    va_end(ap);
    if (err == NULL) {
        free(message);
        return false;
    }
    err->kind = kind;
    err->message = message;
    return false;
}

void cairn_error_clear(cairn_error_t *err) {
    free(err->message);
    err->message = NULL;
}

/* An error a host call returned, as the kit's; the host's copy is freed. */
static bool from_wit(wit_error_t *e, cairn_error_t *err) {
    cairn_error_kind_t kind;
    switch (e->tag) {
    case TYPES_C(ADAPTER_ERROR_INVALID_CONFIG): kind = CAIRN_INVALID_CONFIG; break;
    case TYPES_C(ADAPTER_ERROR_NOT_FOUND): kind = CAIRN_NOT_FOUND; break;
    case TYPES_C(ADAPTER_ERROR_DENIED): kind = CAIRN_DENIED; break;
    case TYPES_C(ADAPTER_ERROR_IO): kind = CAIRN_IO; break;
    case TYPES_C(ADAPTER_ERROR_CORRUPT): kind = CAIRN_CORRUPT; break;
    default: kind = CAIRN_OTHER; break;
    }
    /* Every case carries a string, at the same place. */
    char *message = take(&e->val.other);
    bool r = cairn_fail(err, kind, "%s", message);
    free(message);
    return r;
}

/* The kit's error as the one an export returns. An adapter that returned
 * false without filling the error still returns one that says so. */
static void to_wit(cairn_error_t *err, wit_error_t *out) {
    static const uint8_t tags[] = {
        [CAIRN_INVALID_CONFIG] = TYPES_C(ADAPTER_ERROR_INVALID_CONFIG),
        [CAIRN_NOT_FOUND] = TYPES_C(ADAPTER_ERROR_NOT_FOUND),
        [CAIRN_DENIED] = TYPES_C(ADAPTER_ERROR_DENIED),
        [CAIRN_IO] = TYPES_C(ADAPTER_ERROR_IO),
        [CAIRN_CORRUPT] = TYPES_C(ADAPTER_ERROR_CORRUPT),
        [CAIRN_OTHER] = TYPES_C(ADAPTER_ERROR_OTHER),
    };
    if (err->message == NULL) {
        out->tag = TYPES_C(ADAPTER_ERROR_OTHER);
        out->val.other = give("the adapter failed without saying why (a cairn_* function returned "
                              "false without calling cairn_fail)");
        return;
    }
    out->tag = (unsigned)err->kind <= CAIRN_OTHER ? tags[err->kind] : TYPES_C(ADAPTER_ERROR_OTHER);
    out->val.other = give(err->message);
    cairn_error_clear(err);
}

/* ---- Logging ----------------------------------------------------------------- */

void cairn_log(cairn_level_t level, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *message = cairn_vformat(format, ap);
    va_end(ap);
    static const LOG(level_t) levels[] = {
        [CAIRN_TRACE] = LOG_C(LEVEL_TRACE), [CAIRN_DEBUG] = LOG_C(LEVEL_DEBUG),
        [CAIRN_INFO] = LOG_C(LEVEL_INFO),   [CAIRN_WARN] = LOG_C(LEVEL_WARN),
        [CAIRN_ERROR] = LOG_C(LEVEL_ERROR),
    };
    adapter_string_t m = view(message);
    LOG(write)((unsigned)level <= CAIRN_ERROR ? levels[level] : LOG_C(LEVEL_INFO), &m);
    free(message);
}

/* ---- Records ------------------------------------------------------------------ */

cairn_metadata_t cairn_metadata(uint32_t mode) {
    cairn_metadata_t m;
    memset(&m, 0, sizeof m);
    m.mode = mode;
    return m;
}

void cairn_metadata_set_mtime(cairn_metadata_t *meta, int64_t seconds, uint32_t nanoseconds) {
    meta->mtime.is_some = true;
    meta->mtime.val.seconds = seconds;
    meta->mtime.val.nanoseconds = nanoseconds;
}

static void push(char ***list, size_t *len, char *item) {
    *list = cairn_realloc(*list, (*len + 1) * sizeof **list);
    (*list)[(*len)++] = item;
}

void cairn_verify_problem(cairn_verify_report_t *report, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    push(&report->problems, &report->problems_len, cairn_vformat(format, ap));
    va_end(ap);
}

void cairn_footprint_read(cairn_footprint_t *footprint, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    push(&footprint->reads, &footprint->reads_len, cairn_vformat(format, ap));
    va_end(ap);
}

void cairn_footprint_write(cairn_footprint_t *footprint, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    push(&footprint->writes, &footprint->writes_len, cairn_vformat(format, ap));
    va_end(ap);
}

/* A list of C strings handed to the host as a list it frees. */
static void give_strings(char **items, size_t len, adapter_list_string_t *out) {
    out->len = len;
    out->ptr = cairn_alloc((len ? len : 1) * sizeof *out->ptr);
    for (size_t i = 0; i < len; i++) {
        out->ptr[i] = give(items[i]);
        free(items[i]);
    }
    free(items);
}

static cairn_kind_t kind_of(TYPES(entry_kind_t) kind) {
    switch (kind) {
    case TYPES_C(ENTRY_KIND_FILE): return CAIRN_FILE;
    case TYPES_C(ENTRY_KIND_DIRECTORY): return CAIRN_DIRECTORY;
    case TYPES_C(ENTRY_KIND_SYMLINK): return CAIRN_SYMLINK;
    default: return CAIRN_STREAM;
    }
}

/* ---- The exports ------------------------------------------------------------------ */

void exports_adapter_info(TYPES(adapter_info_t) *ret) {
    cairn_info_t info = {0};
    cairn_info(&info);
    ret->name = give(info.name ? info.name : "unnamed");
    ret->version = give(info.version ? info.version : "0.0.0");
    ret->description = give(info.description ? info.description : "");
    size_t n = 0;
    TYPES(capability_t) *needs = cairn_alloc(2 * sizeof *needs);
    if (info.needs & CAIRN_NEEDS_READ_PATHS) needs[n++] = TYPES_C(CAPABILITY_READ_PATHS);
    if (info.needs & CAIRN_NEEDS_WRITE_PATHS) needs[n++] = TYPES_C(CAPABILITY_WRITE_PATHS);
    ret->needs.ptr = needs;
    ret->needs.len = n;
}

/* The config argument of an export, parsed; NULL with the error set. The
 * argument is the export's to free. */
static cairn_config_t *config_of(adapter_string_t *text, const char *what, cairn_error_t *err) {
    char *problem = NULL;
    cairn_config_t *config = cairn_config_parse((const char *)text->ptr, text->len, what, &problem);
    adapter_string_free(text);
    if (config == NULL) {
        cairn_fail(err, CAIRN_INVALID_CONFIG, "%s", problem);
        free(problem);
    }
    return config;
}

bool exports_adapter_backup(adapter_string_t *config, TYPES(backup_summary_t) *ret, wit_error_t *err) {
    cairn_error_t e = {0};
    cairn_config_t *c = config_of(config, "config", &e);
    memset(ret, 0, sizeof *ret);
    bool ok = c != NULL && cairn_backup(c, ret, &e);
    cairn_config_free(c);
    if (!ok) to_wit(&e, err);
    return ok;
}

bool exports_adapter_restore(adapter_string_t *config, TYPES(restore_summary_t) *ret, wit_error_t *err) {
    cairn_error_t e = {0};
    cairn_config_t *c = config_of(config, "config", &e);
    memset(ret, 0, sizeof *ret);
    bool ok = c != NULL && cairn_restore(c, ret, &e);
    cairn_config_free(c);
    if (!ok) to_wit(&e, err);
    return ok;
}

bool exports_adapter_verify(adapter_string_t *config, TYPES(verify_report_t) *ret, wit_error_t *err) {
    cairn_error_t e = {0};
    cairn_config_t *c = config_of(config, "config", &e);
    cairn_verify_report_t report = {0};
    bool ok = c != NULL && cairn_verify(c, &report, &e);
    cairn_config_free(c);
    if (!ok) {
        for (size_t i = 0; i < report.problems_len; i++) free(report.problems[i]);
        free(report.problems);
        to_wit(&e, err);
        return false;
    }
    ret->entries = report.entries;
    ret->bytes = report.bytes;
    give_strings(report.problems, report.problems_len, &ret->problems);
    return true;
}

bool CONFIGURATION(check)(adapter_string_t *config, adapter_string_t *drill_set,
                          CONFIGURATION(footprint_t) *ret, CONFIGURATION(adapter_error_t) *err) {
    cairn_error_t e = {0};
    cairn_config_t *c = config_of(config, "config", &e);
    cairn_config_t *drill = NULL;
    bool ok = c != NULL;
    if (drill_set != NULL) {
        cairn_config_t *set = config_of(drill_set, "the drill's set", ok ? &e : NULL);
        ok = ok && set != NULL;
        if (ok) drill = cairn_config_merged(c, set, "with the drill's set");
        cairn_config_free(set);
    }
    cairn_footprint_t footprint = {0};
    ok = ok && cairn_check(c, drill, &footprint, &e);
    cairn_config_free(c);
    cairn_config_free(drill);
    if (!ok) {
        for (size_t i = 0; i < footprint.reads_len; i++) free(footprint.reads[i]);
        for (size_t i = 0; i < footprint.writes_len; i++) free(footprint.writes[i]);
        free(footprint.reads);
        free(footprint.writes);
        to_wit(&e, err);
        return false;
    }
    give_strings(footprint.reads, footprint.reads_len, &ret->reads);
    give_strings(footprint.writes, footprint.writes_len, &ret->writes);
    return true;
}

/* ---- archive ------------------------------------------------------------------------ */

typedef bool (*begin_fn)(adapter_string_t *, ARCHIVE(metadata_t) *, ARCHIVE(own_entry_writer_t) *,
                         ARCHIVE(adapter_error_t) *);

static bool begin(begin_fn f, const char *path, const cairn_metadata_t *meta, cairn_entry_writer_t *out,
                  cairn_error_t *err) {
    adapter_string_t p = view(path);
    cairn_metadata_t m = *meta;
    wit_error_t e;
    if (!f(&p, &m, &out->handle, &e)) return from_wit(&e, err);
    return true;
}

bool cairn_begin_file(const char *path, const cairn_metadata_t *meta, cairn_entry_writer_t *out,
                      cairn_error_t *err) {
    return begin(ARCHIVE(begin_file), path, meta, out, err);
}

bool cairn_begin_stream(const char *path, const cairn_metadata_t *meta, cairn_entry_writer_t *out,
                        cairn_error_t *err) {
    return begin(ARCHIVE(begin_stream), path, meta, out, err);
}

bool cairn_write(cairn_entry_writer_t *w, const void *bytes, size_t len, cairn_error_t *err) {
    adapter_list_u8_t list = {(uint8_t *)bytes, len};
    wit_error_t e;
    if (!ARCHIVE(method_entry_writer_write)(ARCHIVE(borrow_entry_writer)(w->handle), &list, &e)) {
        return from_wit(&e, err);
    }
    return true;
}

bool cairn_pump_file(cairn_entry_writer_t *w, const char *path, uint64_t *bytes, cairn_error_t *err) {
    adapter_string_t p = view(path);
    uint64_t n = 0;
    wit_error_t e;
    if (!ARCHIVE(method_entry_writer_pump_file)(ARCHIVE(borrow_entry_writer)(w->handle), &p, &n, &e)) {
        return from_wit(&e, err);
    }
    if (bytes != NULL) *bytes = n;
    return true;
}

bool cairn_finish(cairn_entry_writer_t *w, uint64_t *bytes, cairn_error_t *err) {
    uint64_t n = 0;
    wit_error_t e;
    bool ok = ARCHIVE(method_entry_writer_finish)(ARCHIVE(borrow_entry_writer)(w->handle), &n, &e);
    ARCHIVE(entry_writer_drop_own)(w->handle);
    if (!ok) return from_wit(&e, err);
    if (bytes != NULL) *bytes = n;
    return true;
}

void cairn_cancel(cairn_entry_writer_t *w) {
    ARCHIVE(method_entry_writer_cancel)(ARCHIVE(borrow_entry_writer)(w->handle));
    ARCHIVE(entry_writer_drop_own)(w->handle);
}

bool cairn_add_directory(const char *path, const cairn_metadata_t *meta, cairn_error_t *err) {
    adapter_string_t p = view(path);
    cairn_metadata_t m = *meta;
    wit_error_t e;
    if (!ARCHIVE(add_directory)(&p, &m, &e)) return from_wit(&e, err);
    return true;
}

bool cairn_add_symlink(const char *path, const char *target, const cairn_metadata_t *meta,
                       cairn_error_t *err) {
    adapter_string_t p = view(path), t = view(target);
    cairn_metadata_t m = *meta;
    wit_error_t e;
    if (!ARCHIVE(add_symlink)(&p, &t, &m, &e)) return from_wit(&e, err);
    return true;
}

bool cairn_reuse_unchanged(const char *path, const cairn_metadata_t *meta, bool *reused,
                           cairn_error_t *err) {
    adapter_string_t p = view(path);
    cairn_metadata_t m = *meta;
    wit_error_t e;
    if (!ARCHIVE(reuse_unchanged)(&p, &m, reused, &e)) return from_wit(&e, err);
    return true;
}

void cairn_skip(const char *path, const char *reason) {
    adapter_string_t p = view(path), r = view(reason);
    ARCHIVE(skip)(&p, &r);
}

/* ---- snapshot ------------------------------------------------------------------------- */

bool cairn_next_entry(cairn_entry_t *out, bool *found, cairn_error_t *err) {
    SNAPSHOT(option_entry_t) next;
    wit_error_t e;
    memset(out, 0, sizeof *out);
    if (!SNAPSHOT(next_entry)(&next, &e)) return from_wit(&e, err);
    *found = next.is_some;
    if (!next.is_some) return true;
    out->path = take(&next.val.path);
    out->kind = kind_of(next.val.kind);
    out->meta = next.val.meta;
    out->link_target = next.val.link_target.is_some ? take(&next.val.link_target.val) : NULL;
    return true;
}

void cairn_entry_free(cairn_entry_t *entry) {
    free(entry->path);
    free(entry->link_target);
    memset(entry, 0, sizeof *entry);
}

bool cairn_open(const char *path, cairn_entry_reader_t *out, cairn_error_t *err) {
    adapter_string_t p = view(path);
    wit_error_t e;
    if (!SNAPSHOT(open)(&p, &out->handle, &e)) return from_wit(&e, err);
    return true;
}

bool cairn_read(cairn_entry_reader_t *r, void *buf, size_t max, size_t *len, cairn_error_t *err) {
    adapter_list_u8_t bytes;
    wit_error_t e;
    uint32_t ask = max > UINT32_MAX ? UINT32_MAX : (uint32_t)max;
    if (!SNAPSHOT(method_entry_reader_read)(SNAPSHOT(borrow_entry_reader)(r->handle), ask, &bytes, &e)) {
        return from_wit(&e, err);
    }
    /* The host never hands out more than asked; keep to `max` regardless. */
    size_t n = bytes.len < max ? bytes.len : max;
    memcpy(buf, bytes.ptr, n);
    adapter_list_u8_free(&bytes);
    *len = n;
    return true;
}

bool cairn_pump_to_file(cairn_entry_reader_t *r, const char *path, uint64_t *bytes, cairn_error_t *err) {
    adapter_string_t p = view(path);
    uint64_t n = 0;
    wit_error_t e;
    if (!SNAPSHOT(method_entry_reader_pump_to_file)(SNAPSHOT(borrow_entry_reader)(r->handle), &p, &n, &e)) {
        return from_wit(&e, err);
    }
    if (bytes != NULL) *bytes = n;
    return true;
}

bool cairn_discard(cairn_entry_reader_t *r, uint64_t *bytes, cairn_error_t *err) {
    uint64_t n = 0;
    wit_error_t e;
    if (!SNAPSHOT(method_entry_reader_discard)(SNAPSHOT(borrow_entry_reader)(r->handle), &n, &e)) {
        return from_wit(&e, err);
    }
    if (bytes != NULL) *bytes = n;
    return true;
}

void cairn_reader_close(cairn_entry_reader_t *r) { SNAPSHOT(entry_reader_drop_own)(r->handle); }

/* ---- fs ------------------------------------------------------------------------------------ */

char **cairn_granted_paths(void) {
    adapter_list_string_t list;
    FS(granted_paths)(&list);
    return take_strings(&list);
}

bool cairn_stat(const char *path, cairn_stat_t *out, cairn_error_t *err) {
    adapter_string_t p = view(path);
    FS(file_stat_t) st;
    wit_error_t e;
    memset(out, 0, sizeof *out);
    if (!FS(stat)(&p, &st, &e)) return from_wit(&e, err);
    out->kind = st.kind.is_some ? kind_of(st.kind.val) : CAIRN_OTHER_KIND;
    out->meta = st.meta;
    out->link_target = st.link_target.is_some ? take(&st.link_target.val) : NULL;
    return true;
}

void cairn_stat_free(cairn_stat_t *stat) {
    free(stat->link_target);
    stat->link_target = NULL;
}

bool cairn_list_dir(const char *path, char ***names, cairn_error_t *err) {
    adapter_string_t p = view(path);
    adapter_list_string_t list;
    wit_error_t e;
    if (!FS(list_dir)(&p, &list, &e)) return from_wit(&e, err);
    *names = take_strings(&list);
    return true;
}

bool cairn_create_dir(const char *path, cairn_error_t *err) {
    adapter_string_t p = view(path);
    wit_error_t e;
    if (!FS(create_dir)(&p, &e)) return from_wit(&e, err);
    return true;
}

bool cairn_create_symlink(const char *path, const char *target, cairn_error_t *err) {
    adapter_string_t p = view(path), t = view(target);
    wit_error_t e;
    if (!FS(create_symlink)(&p, &t, &e)) return from_wit(&e, err);
    return true;
}

bool cairn_set_metadata(const char *path, const cairn_metadata_t *meta, cairn_error_t *err) {
    adapter_string_t p = view(path);
    cairn_metadata_t m = *meta;
    wit_error_t e;
    if (!FS(set_metadata)(&p, &m, &e)) return from_wit(&e, err);
    return true;
}

/* ---- process ------------------------------------------------------------------------------- */

char **cairn_granted_programs(void) {
    adapter_list_string_t list;
    PROCESS(granted_programs)(&list);
    return take_strings(&list);
}

static size_t count(const char *const *items) {
    size_t n = 0;
    while (items != NULL && items[n] != NULL) n++;
    return n;
}

bool cairn_spawn(const cairn_command_t *command, cairn_child_t *out, cairn_error_t *err) {
    size_t nargs = count(command->args), nenv = count(command->secret_env);
    if (nenv % 2 != 0) {
        return cairn_fail(err, CAIRN_OTHER, "cairn_spawn of %s: secret_env holds an odd number of strings "
                                            "(it takes pairs: variable, secret)", command->program);
    }
    PROCESS(command_t) cmd;
    adapter_string_t *args = cairn_alloc((nargs ? nargs : 1) * sizeof *args);
    for (size_t i = 0; i < nargs; i++) args[i] = view(command->args[i]);
    adapter_tuple2_string_string_t *env = cairn_alloc((nenv ? nenv / 2 : 1) * sizeof *env);
    for (size_t i = 0; i < nenv / 2; i++) {
        env[i].f0 = view(command->secret_env[2 * i]);
        env[i].f1 = view(command->secret_env[2 * i + 1]);
    }
    cmd.program = view(command->program);
    cmd.args.ptr = args;
    cmd.args.len = nargs;
    cmd.secret_env.ptr = env;
    cmd.secret_env.len = nenv / 2;
    cmd.stdin_ = command->stdin_pipe ? PROCESS_C(STDIO_PIPE) : PROCESS_C(STDIO_NULL);
    cmd.stdout_ = command->stdout_pipe ? PROCESS_C(STDIO_PIPE) : PROCESS_C(STDIO_NULL);
    wit_error_t e;
    bool ok = PROCESS(spawn)(&cmd, &out->handle, &e);
    free(args);
    free(env);
    if (!ok) return from_wit(&e, err);
    return true;
}

#define CHILD(c) PROCESS(borrow_child)((c)->handle)

bool cairn_child_pump_stdout(cairn_child_t *child, cairn_entry_writer_t *w, uint64_t *bytes,
                             cairn_error_t *err) {
    uint64_t n = 0;
    wit_error_t e;
    if (!PROCESS(method_child_pump_stdout)(CHILD(child), ARCHIVE(borrow_entry_writer)(w->handle), &n, &e)) {
        return from_wit(&e, err);
    }
    if (bytes != NULL) *bytes = n;
    return true;
}

bool cairn_child_pump_stdin(cairn_child_t *child, cairn_entry_reader_t *r, cairn_error_t *err) {
    wit_error_t e;
    /* The reader's handle moves to the host. */
    if (!PROCESS(method_child_pump_stdin)(CHILD(child), r->handle, &e)) return from_wit(&e, err);
    return true;
}

bool cairn_child_write_stdin(cairn_child_t *child, const void *bytes, size_t len, cairn_error_t *err) {
    adapter_list_u8_t list = {(uint8_t *)bytes, len};
    wit_error_t e;
    if (!PROCESS(method_child_write_stdin)(CHILD(child), &list, &e)) return from_wit(&e, err);
    return true;
}

void cairn_child_close_stdin(cairn_child_t *child) { PROCESS(method_child_close_stdin)(CHILD(child)); }

bool cairn_child_read_stdout(cairn_child_t *child, void *buf, size_t max, size_t *len, cairn_error_t *err) {
    adapter_list_u8_t bytes;
    wit_error_t e;
    uint32_t ask = max > UINT32_MAX ? UINT32_MAX : (uint32_t)max;
    if (!PROCESS(method_child_read_stdout)(CHILD(child), ask, &bytes, &e)) return from_wit(&e, err);
    size_t n = bytes.len < max ? bytes.len : max;
    memcpy(buf, bytes.ptr, n);
    adapter_list_u8_free(&bytes);
    *len = n;
    return true;
}

bool cairn_child_wait(cairn_child_t *child, cairn_exit_t *out, cairn_error_t *err) {
    PROCESS(exit_status_t) status;
    wit_error_t e;
    memset(out, 0, sizeof *out);
    if (!PROCESS(method_child_wait)(CHILD(child), &status, &e)) return from_wit(&e, err);
    out->has_code = status.code.is_some;
    out->code = status.code.val;
    out->has_signal = status.signal.is_some;
    out->signal = status.signal.val;
    out->stderr_tail = take(&status.stderr_tail);
    return true;
}

void cairn_exit_free(cairn_exit_t *exit) {
    free(exit->stderr_tail);
    exit->stderr_tail = NULL;
}

void cairn_child_kill(cairn_child_t *child) { PROCESS(method_child_kill)(CHILD(child)); }

void cairn_child_close(cairn_child_t *child) { PROCESS(child_drop_own)(child->handle); }

/* ---- secrets ---------------------------------------------------------------------------------- */

bool cairn_reveal(const char *name, uint8_t **bytes, size_t *len, cairn_error_t *err) {
    adapter_string_t n = view(name);
    adapter_list_u8_t secret;
    wit_error_t e;
    if (!SECRETS(reveal)(&n, &secret, &e)) return from_wit(&e, err);
    *bytes = cairn_alloc(secret.len + 1);
    memcpy(*bytes, secret.ptr, secret.len);
    (*bytes)[secret.len] = 0;
    *len = secret.len;
    /* Do not leave the secret in freed memory. */
    volatile uint8_t *p = secret.ptr;
    for (size_t i = 0; i < secret.len; i++) p[i] = 0;
    adapter_list_u8_free(&secret);
    return true;
}

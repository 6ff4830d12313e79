/*
 * Cairn's C kit: write a backup adapter in C.
 *
 * An adapter is a WebAssembly component built against the WIT package
 * `cairn:adapter@0.3.0`. It decides what to back up and how to restore it;
 * the Cairn host moves the bytes. With this kit an adapter defines five
 * functions and calls `cairn_*` functions; the bindings wit-bindgen
 * generates (bindings/adapter.h) stay out of sight:
 *
 *     #include "cairn.h"
 *
 *     void cairn_info(cairn_info_t *info) {
 *         info->name = "hello";
 *         info->version = "0.1.0";
 *         info->description = "Backs up one greeting.";
 *     }
 *
 *     bool cairn_backup(cairn_config_t *config, cairn_backup_summary_t *summary,
 *                       cairn_error_t *err) {
 *         const char *greeting = cairn_config_string(config, "greeting", "hello");
 *         if (!cairn_config_done(config, err)) return false;
 *         cairn_entry_writer_t w;
 *         cairn_metadata_t meta = cairn_metadata(0644);
 *         if (!cairn_begin_stream("/hello.txt", &meta, &w, err)) return false;
 *         if (!cairn_write(&w, greeting, strlen(greeting), err)) return false;
 *         if (!cairn_finish(&w, NULL, err)) return false;
 *         summary->files = 1;
 *         return true;
 *     }
 *     ... cairn_restore, cairn_verify, cairn_check ...
 *
 * The rules, the same everywhere:
 *
 * - A function that can fail returns `bool` and takes a `cairn_error_t *`
 *   last. On failure it returns false with the error filled in; return
 *   false from your own function to pass it on unchanged, or call
 *   `cairn_fail` to make one. The host reports it with the adapter's name.
 * - Strings are NUL-terminated UTF-8. A string or array the kit returns
 *   belongs to you: free it with `free` (or `cairn_strings_free` for a
 *   NULL-terminated array), unless the comment says the config owns it.
 *   Everything you pass in stays yours.
 * - A handle (entry writer, entry reader, child) is closed by the call
 *   that ends it (`cairn_finish`, `cairn_cancel`, `cairn_reader_close`,
 *   `cairn_child_close`); close each one exactly once.
 * - C has no exceptions: an `abort`, a failed `assert` or a stray pointer
 *   traps, and the host shows the end of what the adapter wrote to
 *   standard error with the trap. Say what went wrong with an error
 *   instead wherever you can.
 */
#ifndef CAIRN_H
#define CAIRN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Errors ------------------------------------------------------------ */

/* What kind of failure an error is; the host decides from it whether a
 * retry can help. */
typedef enum cairn_error_kind {
    /* The configuration is invalid; retrying will not help. */
    CAIRN_INVALID_CONFIG,
    /* A path, program or entry does not exist. */
    CAIRN_NOT_FOUND,
    /* The job does not grant this path, program or secret. */
    CAIRN_DENIED,
    /* An I/O error; a retry may help. */
    CAIRN_IO,
    /* The repository's data is damaged. */
    CAIRN_CORRUPT,
    /* Anything else. */
    CAIRN_OTHER,
} cairn_error_kind_t;

/* An error: its kind and a message (malloc'd, owned by the error). */
typedef struct cairn_error {
    cairn_error_kind_t kind;
    char *message;
} cairn_error_t;

/* Fill `err` with a message formatted like printf; returns false, so that
 * `return cairn_fail(err, CAIRN_IO, "reading %s", path);` reads well. */
bool cairn_fail(cairn_error_t *err, cairn_error_kind_t kind, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* Release an error's message (only for an error you handle yourself and do
 * not return). */
void cairn_error_clear(cairn_error_t *err);

/* ---- Logging ------------------------------------------------------------ */

typedef enum cairn_level {
    CAIRN_TRACE,
    CAIRN_DEBUG,
    CAIRN_INFO,
    CAIRN_WARN,
    CAIRN_ERROR,
} cairn_level_t;

/* One line in the host's log, tagged with the adapter; printf-style. */
void cairn_log(cairn_level_t level, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* ---- Configuration -------------------------------------------------------- */

/* A job's configuration: a JSON object. Ask for each key you know; then
 * `cairn_config_done` refuses a key nobody asked for, or a value of the
 * wrong type, as invalid-config naming the key. Strings and arrays it
 * returns belong to the config and live as long as the call you got it in. */
typedef struct cairn_config cairn_config_t;

/* A string value, or `fallback` when the key is absent or null. */
const char *cairn_config_string(cairn_config_t *config, const char *key, const char *fallback);
/* A string value that must be given (NULL, with the problem recorded, when
 * it is not). */
const char *cairn_config_require_string(cairn_config_t *config, const char *key);
/* A whole number from 0 to 2^64-1, or `fallback`. */
uint64_t cairn_config_u64(cairn_config_t *config, const char *key, uint64_t fallback);
/* true or false, or `fallback`. */
bool cairn_config_bool(cairn_config_t *config, const char *key, bool fallback);
/* An array of strings as a NULL-terminated array (empty when absent). */
const char *const *cairn_config_strings(cairn_config_t *config, const char *key);
/* Whether the key is given (and not null). Does not count as asking. */
bool cairn_config_has(const cairn_config_t *config, const char *key);
/* Fail with the first problem found while asking, or with a key nobody
 * asked for; true when there is none. */
bool cairn_config_done(cairn_config_t *config, cairn_error_t *err);

/* ---- Records -------------------------------------------------------------- */

typedef cairn_adapter_0_1_0_types_metadata_t cairn_metadata_t;
typedef cairn_adapter_0_1_0_types_backup_summary_t cairn_backup_summary_t;
typedef cairn_adapter_0_1_0_types_restore_summary_t cairn_restore_summary_t;

/* Metadata with the permission bits `mode` and nothing else known. */
cairn_metadata_t cairn_metadata(uint32_t mode);
/* Set the modification time. */
void cairn_metadata_set_mtime(cairn_metadata_t *meta, int64_t seconds, uint32_t nanoseconds);

/* What kind of entry something is. */
typedef enum cairn_kind {
    CAIRN_FILE,
    CAIRN_DIRECTORY,
    CAIRN_SYMLINK,
    CAIRN_STREAM,
    /* fs: a socket, device or fifo. */
    CAIRN_OTHER_KIND,
} cairn_kind_t;

/* What the adapter needs (cairn_info_t.needs, or'ed). */
enum {
    CAIRN_NEEDS_READ_PATHS = 1,
    CAIRN_NEEDS_WRITE_PATHS = 2,
};

/* Who the adapter is. Fill it in `cairn_info`; the kit copies the strings. */
typedef struct cairn_info {
    const char *name;
    const char *version;
    const char *description;
    unsigned needs;
} cairn_info_t;

/* What a verify found: add a problem with `cairn_verify_problem`. */
typedef struct cairn_verify_report {
    uint64_t entries;
    uint64_t bytes;
    size_t problems_len;
    char **problems;
} cairn_verify_report_t;

/* Add a problem (printf-style) to a verify report. */
void cairn_verify_problem(cairn_verify_report_t *report, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* What a job's settings touch: resource names of the adapter's choosing
 * (`redis://127.0.0.1:6379/3`); one ending in `/` covers every name under
 * it. The host refuses a drill that writes what any job reads. */
typedef struct cairn_footprint {
    size_t reads_len;
    char **reads;
    size_t writes_len;
    char **writes;
} cairn_footprint_t;

void cairn_footprint_read(cairn_footprint_t *footprint, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
void cairn_footprint_write(cairn_footprint_t *footprint, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- What the adapter defines ----------------------------------------------- */

/* Who the adapter is (called once, at the start of a run). */
void cairn_info(cairn_info_t *info);
/* Back up what the config names into the archive. */
bool cairn_backup(cairn_config_t *config, cairn_backup_summary_t *summary, cairn_error_t *err);
/* Restore the snapshot's entries as the config says. */
bool cairn_restore(cairn_config_t *config, cairn_restore_summary_t *summary, cairn_error_t *err);
/* Read the snapshot back and say what is wrong with it. */
bool cairn_verify(cairn_config_t *config, cairn_verify_report_t *report, cairn_error_t *err);
/* Check a job's settings without reaching the service (no grants hold
 * here) and say what they touch. `drill` is NULL when the job has no
 * drill, or else the configuration the drill restores with (the job's
 * config with the drill's `set` applied). */
bool cairn_check(cairn_config_t *config, cairn_config_t *drill, cairn_footprint_t *footprint,
                 cairn_error_t *err);

/* ---- archive: the backup side ----------------------------------------------- */

/* One entry being written. */
typedef struct cairn_entry_writer {
    cairn_adapter_0_1_0_archive_own_entry_writer_t handle;
} cairn_entry_writer_t;

/* Start a file entry (its content may be pumped from the file natively). */
bool cairn_begin_file(const char *path, const cairn_metadata_t *meta, cairn_entry_writer_t *out,
                      cairn_error_t *err);
/* Start a stream entry: content that is not a file (a dump, a program's output). */
bool cairn_begin_stream(const char *path, const cairn_metadata_t *meta, cairn_entry_writer_t *out,
                        cairn_error_t *err);
/* Append bytes to the entry (they pass through the adapter: prefer a pump). */
bool cairn_write(cairn_entry_writer_t *w, const void *bytes, size_t len, cairn_error_t *err);
/* Append the content of a granted file, read natively by the host. */
bool cairn_pump_file(cairn_entry_writer_t *w, const char *path, uint64_t *bytes, cairn_error_t *err);
/* Finish the entry and close the writer; `bytes` (may be NULL) gets its size.
 * On failure the writer is closed too. */
bool cairn_finish(cairn_entry_writer_t *w, uint64_t *bytes, cairn_error_t *err);
/* Abandon the entry (nothing is recorded) and close the writer. */
void cairn_cancel(cairn_entry_writer_t *w);
bool cairn_add_directory(const char *path, const cairn_metadata_t *meta, cairn_error_t *err);
bool cairn_add_symlink(const char *path, const char *target, const cairn_metadata_t *meta,
                       cairn_error_t *err);
/* Reuse the parent snapshot's content when `meta` shows the file unchanged;
 * `*reused` says whether it did. */
bool cairn_reuse_unchanged(const char *path, const cairn_metadata_t *meta, bool *reused,
                           cairn_error_t *err);
/* Record that `path` was skipped, and why. */
void cairn_skip(const char *path, const char *reason);

/* ---- snapshot: the restore side ---------------------------------------------- */

/* One entry of the snapshot being restored (free with `cairn_entry_free`). */
typedef struct cairn_entry {
    char *path;
    cairn_kind_t kind;
    cairn_metadata_t meta;
    /* A symbolic link's target, or NULL. */
    char *link_target;
} cairn_entry_t;

/* The next entry, depth-first; `*found` is false at the end. */
bool cairn_next_entry(cairn_entry_t *out, bool *found, cairn_error_t *err);
void cairn_entry_free(cairn_entry_t *entry);

/* The content of one entry. */
typedef struct cairn_entry_reader {
    cairn_adapter_0_1_0_snapshot_own_entry_reader_t handle;
} cairn_entry_reader_t;

bool cairn_open(const char *path, cairn_entry_reader_t *out, cairn_error_t *err);
/* Read up to `max` bytes into `buf`; `*len` 0 means the end. */
bool cairn_read(cairn_entry_reader_t *r, void *buf, size_t max, size_t *len, cairn_error_t *err);
/* Write the rest into a granted file, natively (in the background). */
bool cairn_pump_to_file(cairn_entry_reader_t *r, const char *path, uint64_t *bytes,
                        cairn_error_t *err);
/* Read and authenticate the rest without handing it out. */
bool cairn_discard(cairn_entry_reader_t *r, uint64_t *bytes, cairn_error_t *err);
void cairn_reader_close(cairn_entry_reader_t *r);

/* ---- fs: native filesystem calls inside the job's grants ---------------------- */

/* The granted paths, NULL-terminated (free with cairn_strings_free). */
char **cairn_granted_paths(void);
void cairn_strings_free(char **strings);

/* What `cairn_stat` found (free with `cairn_stat_free`). */
typedef struct cairn_stat {
    cairn_kind_t kind;
    cairn_metadata_t meta;
    char *link_target;
} cairn_stat_t;

bool cairn_stat(const char *path, cairn_stat_t *out, cairn_error_t *err);
void cairn_stat_free(cairn_stat_t *stat);
/* The names in a directory, sorted, NULL-terminated (free with cairn_strings_free). */
bool cairn_list_dir(const char *path, char ***names, cairn_error_t *err);
bool cairn_create_dir(const char *path, cairn_error_t *err);
bool cairn_create_symlink(const char *path, const char *target, cairn_error_t *err);
bool cairn_set_metadata(const char *path, const cairn_metadata_t *meta, cairn_error_t *err);

/* ---- process: granted programs, run natively ------------------------------------ */

/* The granted programs, NULL-terminated (free with cairn_strings_free). */
char **cairn_granted_programs(void);

/* A program to start. `args` and `secret_env` are NULL-terminated (or NULL);
 * `secret_env` holds pairs: variable name, then the secret it gets. */
typedef struct cairn_command {
    const char *program;
    const char *const *args;
    const char *const *secret_env;
    bool stdin_pipe;
    bool stdout_pipe;
} cairn_command_t;

typedef struct cairn_child {
    cairn_adapter_0_2_0_process_own_child_t handle;
} cairn_child_t;

/* How a program ended (free with cairn_exit_free). */
typedef struct cairn_exit {
    bool has_code;
    int32_t code;
    bool has_signal;
    int32_t signal;
    /* The end of what it wrote to standard error. */
    char *stderr_tail;
} cairn_exit_t;

bool cairn_spawn(const cairn_command_t *command, cairn_child_t *out, cairn_error_t *err);
/* Pump the child's standard output into an entry, natively. */
bool cairn_child_pump_stdout(cairn_child_t *child, cairn_entry_writer_t *w, uint64_t *bytes,
                             cairn_error_t *err);
/* Pump an entry's content into the child's standard input, natively, then
 * close it. The reader is closed. */
bool cairn_child_pump_stdin(cairn_child_t *child, cairn_entry_reader_t *r, cairn_error_t *err);
bool cairn_child_write_stdin(cairn_child_t *child, const void *bytes, size_t len,
                             cairn_error_t *err);
void cairn_child_close_stdin(cairn_child_t *child);
bool cairn_child_read_stdout(cairn_child_t *child, void *buf, size_t max, size_t *len,
                             cairn_error_t *err);
bool cairn_child_wait(cairn_child_t *child, cairn_exit_t *out, cairn_error_t *err);
void cairn_exit_free(cairn_exit_t *exit);
void cairn_child_kill(cairn_child_t *child);
void cairn_child_close(cairn_child_t *child);

/* ---- secrets -------------------------------------------------------------------- */

/* A granted secret's bytes (malloc'd; `*len` bytes, plus a NUL). */
bool cairn_reveal(const char *name, uint8_t **bytes, size_t *len, cairn_error_t *err);

#ifdef __cplusplus
}
#endif

#endif

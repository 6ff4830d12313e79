/*
 * The command adapter: backs up what a granted program writes to its
 * standard output as one stream entry, and restores by feeding that entry
 * to a granted program's standard input — restic's
 * `backup --stdin-from-command`, with the bytes pumped by the host from
 * pipe to repository and back, never through the adapter.
 *
 * A program that fails (a non-zero exit or a signal) fails the backup:
 * its entry is abandoned, so no snapshot holds a partial output as if it
 * were whole. The message carries the end of its standard error.
 *
 * Config:
 *   command          the program and its arguments, as an array (backup)
 *   restore-command  the program and its arguments that read the content
 *                    from standard input (restore)
 *   path             the entry's path in the snapshot (default "/stdout")
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cairn.h"

void cairn_info(cairn_info_t *info) {
    info->name = "command";
    info->version = "0.1.0";
    info->description =
        "Backs up a granted program's standard output as one entry and restores it into a "
        "granted program's standard input.";
    info->needs = 0;
}

struct settings {
    const char *const *command;
    const char *const *restore_command;
    const char *path;
};

static bool read_settings(cairn_config_t *config, struct settings *s, cairn_error_t *err) {
    s->command = cairn_config_strings(config, "command");
    s->restore_command = cairn_config_strings(config, "restore-command");
    s->path = cairn_config_string(config, "path", "/stdout");
    if (!cairn_config_done(config, err)) return false;
    if (s->path[0] != '/' || s->path[1] == '\0') {
        return cairn_fail(err, CAIRN_INVALID_CONFIG,
                          "path: \"%s\" is not an absolute path naming an entry", s->path);
    }
    return true;
}

/* Start `argv` (program, then arguments) with the given pipes. */
static bool start(const char *key, const char *const *argv, bool in, bool out, cairn_child_t *child,
                  cairn_error_t *err) {
    if (argv[0] == NULL) {
        return cairn_fail(err, CAIRN_INVALID_CONFIG, "%s: give the program and its arguments", key);
    }
    cairn_command_t cmd = {
        .program = argv[0], .args = argv + 1, .stdin_pipe = in, .stdout_pipe = out};
    return cairn_spawn(&cmd, child, err);
}

/* Wait for the program; fail unless it exited 0, naming it and carrying
 * the end of its standard error. */
static bool succeeded(const char *program, cairn_child_t *child, cairn_error_t *err) {
    cairn_exit_t exit;
    if (!cairn_child_wait(child, &exit, err)) return false;
    bool ok = exit.has_code && exit.code == 0;
    if (!ok && exit.has_signal) {
        cairn_fail(err, CAIRN_IO, "%s was killed by signal %d; its standard error ends:\n%s", program,
                   (int)exit.signal, exit.stderr_tail);
    } else if (!ok) {
        cairn_fail(err, CAIRN_IO, "%s exited with status %d; its standard error ends:\n%s", program,
                   exit.has_code ? (int)exit.code : -1, exit.stderr_tail);
    }
    cairn_exit_free(&exit);
    return ok;
}

bool cairn_backup(cairn_config_t *config, cairn_backup_summary_t *summary, cairn_error_t *err) {
    struct settings s;
    if (!read_settings(config, &s, err)) return false;
    cairn_child_t child;
    if (!start("command", s.command, false, true, &child, err)) return false;
    cairn_metadata_t meta = cairn_metadata(0644);
    cairn_metadata_set_mtime(&meta, (int64_t)time(NULL), 0);
    cairn_entry_writer_t w;
    bool ok = cairn_begin_stream(s.path, &meta, &w, err);
    if (!ok) {
        cairn_child_kill(&child);
        cairn_error_t ignored = {0};
        cairn_exit_t exit;
        if (cairn_child_wait(&child, &exit, &ignored)) cairn_exit_free(&exit);
        cairn_error_clear(&ignored);
        cairn_child_close(&child);
        return false;
    }
    uint64_t bytes = 0;
    ok = cairn_child_pump_stdout(&child, &w, &bytes, err);
    if (!ok) cairn_child_kill(&child);
    /* Always wait, so the program is reaped; its status decides. */
    cairn_error_t status = {0};
    bool exited_well = succeeded(s.command[0], &child, ok ? err : &status);
    cairn_error_clear(&status);
    cairn_child_close(&child);
    if (!ok || !exited_well) {
        cairn_cancel(&w);
        return false;
    }
    if (!cairn_finish(&w, NULL, err)) return false;
    cairn_log(CAIRN_INFO, "%s wrote %llu bytes into %s", s.command[0], (unsigned long long)bytes, s.path);
    summary->files = 1;
    return true;
}

/* Find the entry at `path` in the snapshot, and its size; false with
 * NOT_FOUND if absent. */
static bool find(const char *path, uint64_t *size, cairn_error_t *err) {
    for (;;) {
        cairn_entry_t entry;
        bool found;
        if (!cairn_next_entry(&entry, &found, err)) return false;
        if (!found) {
            return cairn_fail(err, CAIRN_NOT_FOUND, "the snapshot holds no entry %s (config key path)", path);
        }
        bool match = strcmp(entry.path, path) == 0 && (entry.kind == CAIRN_STREAM || entry.kind == CAIRN_FILE);
        *size = entry.meta.size.is_some ? entry.meta.size.val : 0;
        cairn_entry_free(&entry);
        if (match) return true;
    }
}

bool cairn_restore(cairn_config_t *config, cairn_restore_summary_t *summary, cairn_error_t *err) {
    struct settings s;
    if (!read_settings(config, &s, err)) return false;
    if (s.restore_command[0] == NULL) {
        return cairn_fail(err, CAIRN_INVALID_CONFIG,
                          "restore-command: give the program (and its arguments) that reads the content "
                          "from standard input");
    }
    uint64_t size = 0;
    if (!find(s.path, &size, err)) return false;
    cairn_entry_reader_t r;
    if (!cairn_open(s.path, &r, err)) return false;
    cairn_child_t child;
    if (!start("restore-command", s.restore_command, true, false, &child, err)) {
        cairn_reader_close(&r);
        return false;
    }
    /* The host pumps the entry into the program and closes its input. */
    bool ok = cairn_child_pump_stdin(&child, &r, err);
    if (!ok) cairn_child_kill(&child);
    cairn_error_t status = {0};
    bool exited_well = succeeded(s.restore_command[0], &child, ok ? err : &status);
    cairn_error_clear(&status);
    cairn_child_close(&child);
    if (!ok || !exited_well) return false;
    summary->files = 1;
    summary->bytes = size;
    return true;
}

bool cairn_verify(cairn_config_t *config, cairn_verify_report_t *report, cairn_error_t *err) {
    struct settings s;
    if (!read_settings(config, &s, err)) return false;
    bool seen = false;
    for (;;) {
        cairn_entry_t entry;
        bool found;
        if (!cairn_next_entry(&entry, &found, err)) return false;
        if (!found) break;
        report->entries++;
        bool ok = true;
        if (entry.kind == CAIRN_STREAM || entry.kind == CAIRN_FILE) {
            seen = seen || strcmp(entry.path, s.path) == 0;
            cairn_entry_reader_t r;
            uint64_t n = 0;
            if ((ok = cairn_open(entry.path, &r, err))) {
                ok = cairn_discard(&r, &n, err);
                cairn_reader_close(&r);
            }
            report->bytes += n;
        }
        cairn_entry_free(&entry);
        if (!ok) return false;
    }
    if (!seen) cairn_verify_problem(report, "the snapshot holds no entry %s", s.path);
    return true;
}

bool cairn_check(cairn_config_t *config, cairn_config_t *drill, cairn_footprint_t *footprint,
                 cairn_error_t *err) {
    (void)footprint;
    struct settings s;
    if (!read_settings(config, &s, err)) return false;
    if (s.command[0] == NULL) return cairn_fail(err, CAIRN_INVALID_CONFIG, "command: give the program and its arguments");
    return drill == NULL || read_settings(drill, &s, err);
}

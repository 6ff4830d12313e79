/*
 * The {{name}} adapter for Cairn.
 *
 * A starting point that works as it is: it backs up the paths its job
 * grants (files, directories, symlinks, with their metadata) and restores
 * them under `target`. Change what it reads and how it restores; keep
 * `cairn adapter check {{name}}.wasm` passing.
 */
#include <stdlib.h>
#include <string.h>

#include "cairn.h"

void cairn_info(cairn_info_t *info) {
    info->name = "{{name}}";
    info->version = "0.1.0";
    info->description = "Backs up the paths its job grants.";
    info->needs = CAIRN_NEEDS_READ_PATHS | CAIRN_NEEDS_WRITE_PATHS;
}

/* The settings: read by every entry point, so each refuses the same keys. */
struct settings {
    /* Restore: the directory entries are restored under (it must be granted). */
    const char *target;
};

static bool read_settings(cairn_config_t *config, struct settings *s, cairn_error_t *err) {
    s->target = cairn_config_string(config, "target", NULL);
    return cairn_config_done(config, err);
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir);
    while (n > 0 && dir[n - 1] == '/') n--;
    size_t size = n + 1 + strlen(name) + 1;
    char *path = malloc(size);
    if (path == NULL) abort();
    memcpy(path, dir, n);
    path[n] = '/';
    strcpy(path + n + 1, name[0] == '/' ? name + 1 : name);
    return path;
}

/* Depth-first in name order; recursion is bounded by the tree's depth. */
static bool back_up(const char *path, cairn_backup_summary_t *summary, cairn_error_t *err) {
    cairn_stat_t st;
    if (!cairn_stat(path, &st, err)) return false;
    bool ok = true;
    switch (st.kind) {
    case CAIRN_DIRECTORY: {
        char **names;
        ok = cairn_add_directory(path, &st.meta, err) && cairn_list_dir(path, &names, err);
        if (!ok) break;
        summary->directories++;
        for (char **name = names; ok && *name != NULL; name++) {
            char *child = join(path, *name);
            ok = back_up(child, summary, err);
            free(child);
        }
        cairn_strings_free(names);
        break;
    }
    case CAIRN_SYMLINK:
        ok = cairn_add_symlink(path, st.link_target, &st.meta, err);
        if (ok) summary->symlinks++;
        break;
    case CAIRN_FILE: {
        /* The host reads the file natively: no byte of it enters the adapter. */
        cairn_entry_writer_t w;
        if (!cairn_begin_file(path, &st.meta, &w, err)) {
            ok = false;
            break;
        }
        if (!cairn_pump_file(&w, path, NULL, err)) {
            cairn_cancel(&w);
            ok = false;
            break;
        }
        ok = cairn_finish(&w, NULL, err);
        if (ok) summary->files++;
        break;
    }
    default:
        cairn_skip(path, "not a file, directory or symbolic link");
        summary->skipped++;
        break;
    }
    cairn_stat_free(&st);
    return ok;
}

bool cairn_backup(cairn_config_t *config, cairn_backup_summary_t *summary, cairn_error_t *err) {
    struct settings s;
    if (!read_settings(config, &s, err)) return false;
    char **paths = cairn_granted_paths();
    bool ok = true;
    for (char **p = paths; ok && *p != NULL; p++) ok = back_up(*p, summary, err);
    cairn_strings_free(paths);
    return ok;
}

struct pending {
    char *path;
    cairn_metadata_t meta;
};

bool cairn_restore(cairn_config_t *config, cairn_restore_summary_t *summary, cairn_error_t *err) {
    struct settings s;
    if (!read_settings(config, &s, err)) return false;
    if (s.target == NULL) return cairn_fail(err, CAIRN_INVALID_CONFIG, "target: give the directory to restore into");
    struct pending *dirs = NULL;
    size_t ndirs = 0;
    bool ok = true, found = true;
    while (ok) {
        cairn_entry_t entry;
        if (!(ok = cairn_next_entry(&entry, &found, err)) || !found) break;
        char *path = join(s.target, entry.path);
        if (entry.kind == CAIRN_DIRECTORY) {
            ok = cairn_create_dir(path, err);
            struct pending *more = realloc(dirs, (ndirs + 1) * sizeof *dirs);
            if (more == NULL) abort();
            dirs = more;
            dirs[ndirs].path = path;
            dirs[ndirs++].meta = entry.meta;
            path = NULL;
            summary->directories++;
        } else if (entry.kind == CAIRN_SYMLINK) {
            ok = cairn_create_symlink(path, entry.link_target ? entry.link_target : "", err) &&
                 cairn_set_metadata(path, &entry.meta, err);
            summary->symlinks++;
        } else {
            /* The host writes the file natively, in the background. */
            cairn_entry_reader_t r;
            uint64_t n = 0;
            if ((ok = cairn_open(entry.path, &r, err))) {
                ok = cairn_pump_to_file(&r, path, &n, err);
                cairn_reader_close(&r);
            }
            ok = ok && cairn_set_metadata(path, &entry.meta, err);
            summary->bytes += n;
            summary->files++;
        }
        free(path);
        cairn_entry_free(&entry);
    }
    /* A directory's times and mode last, once nothing more is written in it. */
    while (ndirs > 0) {
        ndirs--;
        ok = ok && cairn_set_metadata(dirs[ndirs].path, &dirs[ndirs].meta, err);
        free(dirs[ndirs].path);
    }
    free(dirs);
    return ok;
}

bool cairn_verify(cairn_config_t *config, cairn_verify_report_t *report, cairn_error_t *err) {
    struct settings s;
    if (!read_settings(config, &s, err)) return false;
    bool found = true;
    while (true) {
        cairn_entry_t entry;
        if (!cairn_next_entry(&entry, &found, err)) return false;
        if (!found) return true;
        report->entries++;
        bool ok = true;
        if (entry.kind == CAIRN_FILE || entry.kind == CAIRN_STREAM) {
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
}

bool cairn_check(cairn_config_t *config, cairn_config_t *drill, cairn_footprint_t *footprint,
                 cairn_error_t *err) {
    (void)footprint;
    struct settings s;
    return read_settings(config, &s, err) && (drill == NULL || read_settings(drill, &s, err));
}

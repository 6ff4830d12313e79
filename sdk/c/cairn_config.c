/*
 * The C kit's configuration reader: a small JSON parser (RFC 8259) that
 * turns a job's configuration into a tree, and the `cairn_config_*` calls
 * that read it. Written for this kit; no third-party code.
 *
 * Limits, so that a hostile or broken configuration fails with a message
 * instead of exhausting the adapter: nesting 64 deep, and strings or keys
 * holding a NUL byte (a C string cannot) are refused.
 */
#include "cairn_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_DEPTH = 64 };

typedef enum json_type { J_NULL, J_BOOL, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT } json_type_t;

typedef struct json json_t;
struct json {
    json_type_t type;
    bool boolean;
    /* A string's value, or a number's literal text. */
    char *text;
    /* An array's items, or an object's values. */
    size_t len;
    json_t *items;
    /* An object's keys, and whether each was asked for. */
    char **keys;
    bool *asked;
};

struct cairn_config {
    json_t root;
    /* Where the config comes from, for messages ("config"). */
    const char *what;
    /* The first problem met while asking (malloc'd), or NULL. */
    char *problem;
    /* Arrays handed out by cairn_config_strings, freed with the config. */
    const char ***arrays;
    size_t arrays_len;
    /* Every key asked for, given or not: the keys the adapter knows. */
    char **known;
    size_t known_len;
};

typedef struct parser {
    const char *p;
    const char *end;
    char *error;
} parser_t;

static bool parse_value(parser_t *ps, json_t *out, int depth);
static json_t json_copy(const json_t *from);

static bool parse_error(parser_t *ps, const char *format, ...) {
    if (ps->error == NULL) {
        va_list ap;
        va_start(ap, format);
        ps->error = cairn_vformat(format, ap);
        va_end(ap);
    }
    return false;
}

static void skip_space(parser_t *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) {
        ps->p++;
    }
}

static void json_free(json_t *j) {
    free(j->text);
    for (size_t i = 0; i < j->len; i++) {
        json_free(&j->items[i]);
        if (j->keys != NULL) {
            free(j->keys[i]);
        }
    }
    free(j->items);
    free(j->keys);
    free(j->asked);
    memset(j, 0, sizeof *j);
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool parse_hex4(parser_t *ps, uint32_t *out) {
    if (ps->end - ps->p < 4) return parse_error(ps, "a \\u escape is cut short");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(ps->p[i]);
        if (d < 0) return parse_error(ps, "a \\u escape has a character that is not hexadecimal");
        v = v * 16 + (uint32_t)d;
    }
    ps->p += 4;
    *out = v;
    return true;
}

/* Append a code point as UTF-8. */
static void put_utf8(char *buf, size_t *n, uint32_t cp) {
    if (cp < 0x80) {
        buf[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        buf[(*n)++] = (char)(0xC0 | (cp >> 6));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        buf[(*n)++] = (char)(0xE0 | (cp >> 12));
        buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        buf[(*n)++] = (char)(0xF0 | (cp >> 18));
        buf[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        buf[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

/* A string starting at the opening quote. The host hands over valid
 * UTF-8, so only escapes need decoding; the result is never longer than
 * the literal. */
static bool parse_string(parser_t *ps, char **out) {
    ps->p++;
    const char *start = ps->p;
    size_t cap = 1;
    while (ps->p < ps->end && *ps->p != '"') {
        if (*ps->p == '\\') ps->p++;
        ps->p++;
        cap++;
    }
    if (ps->p >= ps->end) return parse_error(ps, "a string is not closed");
    ps->p = start;
    char *buf = cairn_alloc(cap + 4);
    size_t n = 0;
    while (*ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) {
            free(buf);
            return parse_error(ps, "a string holds a control character");
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            ps->p++;
            continue;
        }
        ps->p++;
        char e = *ps->p++;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (!parse_hex4(ps, &cp)) {
                free(buf);
                return false;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t low;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    free(buf);
                    return parse_error(ps, "a \\u escape is half of a surrogate pair");
                }
                ps->p += 2;
                if (!parse_hex4(ps, &low)) {
                    free(buf);
                    return false;
                }
                if (low < 0xDC00 || low > 0xDFFF) {
                    free(buf);
                    return parse_error(ps, "a \\u escape is half of a surrogate pair");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(buf);
                return parse_error(ps, "a \\u escape is half of a surrogate pair");
            }
            if (cp == 0) {
                free(buf);
                return parse_error(ps, "a string holds \\u0000 (NUL), which a C string cannot carry");
            }
            put_utf8(buf, &n, cp);
            break;
        }
        default:
            free(buf);
            return parse_error(ps, "a string has an unknown escape \\%c", e);
        }
    }
    ps->p++;
    buf[n] = '\0';
    *out = buf;
    return true;
}

static bool parse_number(parser_t *ps, json_t *out) {
    const char *start = ps->p;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return parse_error(ps, "a number has no digits");
    if (*ps->p == '0') {
        ps->p++;
    } else {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return parse_error(ps, "a number has no digits after '.'");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return parse_error(ps, "a number has no exponent digits");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    out->type = J_NUMBER;
    out->text = cairn_strndup(start, (size_t)(ps->p - start));
    return true;
}

static bool parse_word(parser_t *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) {
        size_t left = (size_t)(ps->end - ps->p);
        return parse_error(ps, "unexpected text \"%.*s\"", (int)(left < 12 ? left : 12), ps->p);
    }
    ps->p += n;
    return true;
}

static bool parse_items(parser_t *ps, json_t *out, int depth, bool object) {
    char close = object ? '}' : ']';
    size_t cap = 0;
    ps->p++;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return true;
    }
    for (;;) {
        if (out->len == cap) {
            cap = cap ? cap * 2 : 4;
            out->items = cairn_realloc(out->items, cap * sizeof *out->items);
            if (object) {
                out->keys = cairn_realloc(out->keys, cap * sizeof *out->keys);
                out->asked = cairn_realloc(out->asked, cap * sizeof *out->asked);
            }
        }
        json_t *item = &out->items[out->len];
        memset(item, 0, sizeof *item);
        skip_space(ps);
        if (object) {
            char *key;
            if (ps->p >= ps->end || *ps->p != '"') return parse_error(ps, "an object key is not a string");
            if (!parse_string(ps, &key)) return false;
            for (size_t i = 0; i < out->len; i++) {
                if (strcmp(out->keys[i], key) == 0) {
                    parse_error(ps, "key \"%s\" is given twice", key);
                    free(key);
                    return false;
                }
            }
            out->keys[out->len] = key;
            out->asked[out->len] = false;
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                out->len++;
                return parse_error(ps, "key \"%s\" has no ':'", key);
            }
            ps->p++;
        }
        out->len++;
        if (!parse_value(ps, item, depth + 1)) return false;
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return true;
        }
        return parse_error(ps, object ? "an object misses a ',' or '}'" : "an array misses a ',' or ']'");
    }
}

static bool parse_value(parser_t *ps, json_t *out, int depth) {
    if (depth > MAX_DEPTH) return parse_error(ps, "it nests deeper than %d levels", MAX_DEPTH);
    skip_space(ps);
    if (ps->p >= ps->end) return parse_error(ps, "it ends where a value should be");
    switch (*ps->p) {
    case '{': out->type = J_OBJECT; return parse_items(ps, out, depth, true);
    case '[': out->type = J_ARRAY; return parse_items(ps, out, depth, false);
    case '"': out->type = J_STRING; return parse_string(ps, &out->text);
    case 't': out->type = J_BOOL; out->boolean = true; return parse_word(ps, "true");
    case 'f': out->type = J_BOOL; out->boolean = false; return parse_word(ps, "false");
    case 'n': out->type = J_NULL; return parse_word(ps, "null");
    default: return parse_number(ps, out);
    }
}

cairn_config_t *cairn_config_parse(const char *text, size_t len, const char *what, char **error) {
    cairn_config_t *config = cairn_alloc(sizeof *config);
    memset(config, 0, sizeof *config);
    config->what = what;
    parser_t ps = {text, text + len, NULL};
    bool ok = parse_value(&ps, &config->root, 0);
    if (ok) {
        skip_space(&ps);
        if (ps.p != ps.end) ok = parse_error(&ps, "there is text after the value");
    }
    if (!ok) {
        *error = cairn_format("%s is not JSON the C kit can read: %s", what, ps.error);
    } else if (config->root.type != J_OBJECT) {
        *error = cairn_format("%s is not a JSON object", what);
        ok = false;
    }
    free(ps.error);
    if (!ok) {
        cairn_config_free(config);
        return NULL;
    }
    return config;
}

void cairn_config_free(cairn_config_t *config) {
    if (config == NULL) return;
    json_free(&config->root);
    free(config->problem);
    for (size_t i = 0; i < config->arrays_len; i++) free((void *)config->arrays[i]);
    free(config->arrays);
    for (size_t i = 0; i < config->known_len; i++) free(config->known[i]);
    free(config->known);
    free(config);
}

cairn_config_t *cairn_config_merged(const cairn_config_t *base, const cairn_config_t *set, const char *what) {
    /* Build the merged object by copying keys and deep-copying values is
     * more code than reparsing; both inputs came from JSON, so a merged
     * tree is made by moving nothing and referencing nothing: copy. */
    cairn_config_t *merged = cairn_alloc(sizeof *merged);
    memset(merged, 0, sizeof *merged);
    merged->what = what;
    merged->root.type = J_OBJECT;
    size_t cap = base->root.len + set->root.len;
    merged->root.items = cairn_alloc((cap ? cap : 1) * sizeof(json_t));
    merged->root.keys = cairn_alloc((cap ? cap : 1) * sizeof(char *));
    merged->root.asked = cairn_alloc((cap ? cap : 1) * sizeof(bool));
    const cairn_config_t *sources[2] = {base, set};
    for (int s = 0; s < 2; s++) {
        const json_t *from = &sources[s]->root;
        for (size_t i = 0; i < from->len; i++) {
            size_t at = merged->root.len;
            for (size_t k = 0; k < merged->root.len; k++) {
                if (strcmp(merged->root.keys[k], from->keys[i]) == 0) {
                    at = k;
                    json_free(&merged->root.items[k]);
                    free(merged->root.keys[k]);
                    break;
                }
            }
            merged->root.items[at] = json_copy(&from->items[i]);
            merged->root.keys[at] = cairn_strdup(from->keys[i]);
            merged->root.asked[at] = false;
            if (at == merged->root.len) merged->root.len++;
        }
    }
    return merged;
}

static json_t json_copy(const json_t *from) {
    json_t to = *from;
    to.text = from->text ? cairn_strdup(from->text) : NULL;
    to.items = NULL;
    to.keys = NULL;
    to.asked = NULL;
    if (from->len > 0) {
        to.items = cairn_alloc(from->len * sizeof *to.items);
        for (size_t i = 0; i < from->len; i++) to.items[i] = json_copy(&from->items[i]);
        if (from->keys != NULL) {
            to.keys = cairn_alloc(from->len * sizeof *to.keys);
            to.asked = cairn_alloc(from->len * sizeof *to.asked);
            for (size_t i = 0; i < from->len; i++) {
                to.keys[i] = cairn_strdup(from->keys[i]);
                to.asked[i] = false;
            }
        }
    }
    return to;
}

/* The value of `key`, marking it asked; NULL when absent or null. */
static json_t *lookup(cairn_config_t *config, const char *key) {
    bool known = false;
    for (size_t i = 0; i < config->known_len && !known; i++) known = strcmp(config->known[i], key) == 0;
    if (!known) {
        config->known = cairn_realloc(config->known, (config->known_len + 1) * sizeof *config->known);
        config->known[config->known_len++] = cairn_strdup(key);
    }
    json_t *root = &config->root;
    for (size_t i = 0; i < root->len; i++) {
        if (strcmp(root->keys[i], key) == 0) {
            root->asked[i] = true;
            return root->items[i].type == J_NULL ? NULL : &root->items[i];
        }
    }
    return NULL;
}

static void problem(cairn_config_t *config, const char *format, ...) {
    if (config->problem != NULL) return;
    va_list ap;
    va_start(ap, format);
    char *message = cairn_vformat(format, ap);
    va_end(ap);
    config->problem = cairn_format("%s: %s", config->what, message);
    free(message);
}

static const char *type_name(json_type_t type) {
    switch (type) {
    case J_NULL: return "null";
    case J_BOOL: return "a boolean";
    case J_NUMBER: return "a number";
    case J_STRING: return "a string";
    case J_ARRAY: return "an array";
    case J_OBJECT: return "an object";
    }
    return "a value";
}

const char *cairn_config_string(cairn_config_t *config, const char *key, const char *fallback) {
    json_t *v = lookup(config, key);
    if (v == NULL) return fallback;
    if (v->type != J_STRING) {
        problem(config, "%s: %s is not a string", key, type_name(v->type));
        return fallback;
    }
    return v->text;
}

const char *cairn_config_require_string(cairn_config_t *config, const char *key) {
    const char *value = cairn_config_string(config, key, NULL);
    if (value == NULL && !cairn_config_has(config, key)) problem(config, "missing key \"%s\"", key);
    return value;
}

uint64_t cairn_config_u64(cairn_config_t *config, const char *key, uint64_t fallback) {
    json_t *v = lookup(config, key);
    if (v == NULL) return fallback;
    const char *t = v->type == J_NUMBER ? v->text : "";
    uint64_t n = 0;
    bool ok = v->type == J_NUMBER && *t != '\0';
    for (; ok && *t != '\0'; t++) {
        if (*t < '0' || *t > '9' || n > (UINT64_MAX - (uint64_t)(*t - '0')) / 10) {
            ok = false;
            break;
        }
        n = n * 10 + (uint64_t)(*t - '0');
    }
    if (!ok) {
        problem(config, "%s: %s is not a whole number from 0 to 18446744073709551615", key,
                v->type == J_NUMBER ? v->text : type_name(v->type));
        return fallback;
    }
    return n;
}

bool cairn_config_bool(cairn_config_t *config, const char *key, bool fallback) {
    json_t *v = lookup(config, key);
    if (v == NULL) return fallback;
    if (v->type != J_BOOL) {
        problem(config, "%s: %s is not true or false", key, type_name(v->type));
        return fallback;
    }
    return v->boolean;
}

const char *const *cairn_config_strings(cairn_config_t *config, const char *key) {
    json_t *v = lookup(config, key);
    size_t n = v != NULL && v->type == J_ARRAY ? v->len : 0;
    const char **array = cairn_alloc((n + 1) * sizeof *array);
    config->arrays = cairn_realloc(config->arrays, (config->arrays_len + 1) * sizeof *config->arrays);
    config->arrays[config->arrays_len++] = array;
    array[0] = NULL;
    if (v == NULL) return array;
    if (v->type != J_ARRAY) {
        problem(config, "%s: %s is not an array of strings", key, type_name(v->type));
        return array;
    }
    for (size_t i = 0; i < n; i++) {
        if (v->items[i].type != J_STRING) {
            problem(config, "%s: item %zu is %s, not a string", key, i, type_name(v->items[i].type));
            array[0] = NULL;
            return array;
        }
        array[i] = v->items[i].text;
    }
    array[n] = NULL;
    return array;
}

bool cairn_config_has(const cairn_config_t *config, const char *key) {
    const json_t *root = &config->root;
    for (size_t i = 0; i < root->len; i++) {
        if (strcmp(root->keys[i], key) == 0) return root->items[i].type != J_NULL;
    }
    return false;
}

bool cairn_config_done(cairn_config_t *config, cairn_error_t *err) {
    if (config->problem != NULL) return cairn_fail(err, CAIRN_INVALID_CONFIG, "%s", config->problem);
    const json_t *root = &config->root;
    for (size_t i = 0; i < root->len; i++) {
        if (root->asked[i]) continue;
        /* Name the keys the adapter knows, as the other kits do. */
        size_t size = 1;
        for (size_t k = 0; k < config->known_len; k++) size += strlen(config->known[k]) + 2;
        char *known = cairn_alloc(size);
        known[0] = '\0';
        for (size_t k = 0; k < config->known_len; k++) {
            if (k > 0) strcat(known, ", ");
            strcat(known, config->known[k]);
        }
        bool r = cairn_fail(err, CAIRN_INVALID_CONFIG, "%s: unknown key \"%s\" (known keys: %s)",
                            config->what, root->keys[i], known[0] ? known : "none");
        free(known);
        return r;
    }
    return true;
}

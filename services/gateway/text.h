/* services/gateway/text.h — the text side of relaying tokens to a client: a growable buffer of
 * detokenized bytes, token bytes as proto strings, and how much text stop strings let go. */
#ifndef DUET_GATEWAY_TEXT_H
#define DUET_GATEWAY_TEXT_H

#include <stddef.h>

/* A growable byte buffer; the text is kept NUL-terminated once anything was appended. */
typedef struct {
    char *p;
    size_t len, cap;
} duet_text_buf_t;

/* 0, or -1 when out of memory (the buffer is then unchanged). */
int  duet_text_buf_append(duet_text_buf_t *b, const char *s, size_t n);
/* Drops the first n (<= len) bytes. */
void duet_text_buf_consume(duet_text_buf_t *b, size_t n);
void duet_text_buf_free(duet_text_buf_t *b);

/* A token's bytes as a proto string (malloc'd; NULL when out of memory): valid UTF-8 is kept,
 * each other byte becomes "\xNN". */
char *duet_text_escape(const char *bytes, size_t n);

/* How much of text[0..len) may be released to the client with these stop strings: a full match
 * cuts the text before the earliest one (*matched_p = 1); else every byte before the earliest
 * suffix that could still grow into a stop string is safe (all of it without stop strings). */
size_t duet_text_stop_scan(char *const *stops, size_t n_stops, const char *text, size_t len,
                           int *matched_p);

#endif

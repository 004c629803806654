/*
 * The monotonic clock, for measuring intervals (commit groups, connection
 * set-up and transaction times): it never jumps with the wall clock, so a
 * duration is never negative. Counts start at an arbitrary point (the
 * boot), so only differences mean anything.
 */
#ifndef SMARTHOST_CLOCK_H
#define SMARTHOST_CLOCK_H

#include <stdint.h>

/* CLOCK_MONOTONIC now, in microseconds and in milliseconds. Never fail. */
uint64_t clock_mono_us(void);
uint64_t clock_mono_ms(void);

#endif

/*
 * The monotonic clock (see clock.h). CLOCK_MONOTONIC exists on every
 * kernel this daemon supports, so clock_gettime cannot fail here.
 */
#include <time.h>

#include "clock.h"

uint64_t
clock_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t
clock_mono_ms(void)
{
	return clock_mono_us() / 1000;
}

/* segment.c: being written (placeholder so the build links) */
#include "pylog_core.h"

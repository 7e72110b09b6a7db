#include "internal.h"

AIQ_API const char *aiq_version_string(void)
{
	return AIQ_VERSION_STRING;
}

AIQ_API int aiq_version_number(void)
{
	return AIQ_VERSION_NUMBER;
}

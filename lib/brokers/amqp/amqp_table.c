/*
 * JSON <-> AMQP field tables for the amqp driver. Celery's headers travel in
 * the AMQP `headers` property; a Python worker reads them with py-amqp, which
 * accepts any tag, but byte-identical tags keep mixed C/Python fleets and
 * wire captures comparable, so the encoder writes exactly what py-amqp does.
 */
#include "amqp_table.h"

#include <math.h>
#include <string.h>

#define MAX_DEPTH 64

static int value_from_json(amqp_field_value_t *out, const json_t *v, amqp_pool_t *pool, int depth);

static int copy_bytes(amqp_bytes_t *out, const char *s, size_t len, amqp_pool_t *pool)
{
	out->len = len;
	out->bytes = NULL;
	if (len == 0)
		return AIQ_OK;
	void *p = amqp_pool_alloc(pool, len);
	if (p == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory encoding an AMQP field table");
	memcpy(p, s, len);
	out->bytes = p;
	return AIQ_OK;
}

static int table_from_json(amqp_table_t *out, const json_t *obj, amqp_pool_t *pool, int depth)
{
	out->num_entries = 0;
	out->entries = NULL;
	if (obj == NULL)
		return AIQ_OK;
	if (!json_is_object(obj))
		return aiq__err(AIQ_EINVAL, "AMQP field table must come from a JSON object");
	if (depth > MAX_DEPTH)
		return aiq__err(AIQ_EINVAL, "AMQP field table nested deeper than %d levels",
		                MAX_DEPTH);
	size_t n = json_object_size(obj);
	if (n == 0)
		return AIQ_OK;
	amqp_table_entry_t *e = amqp_pool_alloc(pool, n * sizeof *e);
	if (e == NULL)
		return aiq__err(AIQ_ENOMEM, "out of memory encoding an AMQP field table");
	const char *key;
	const json_t *val;
	int i = 0;
	json_object_foreach((json_t *)(uintptr_t)obj, key, val)
	{
		size_t klen = strlen(key);
		if (klen > 255)
			return aiq__err(AIQ_EINVAL,
			                "AMQP header name longer than 255 bytes: '%.40s...'", key);
		int rc = copy_bytes(&e[i].key, key, klen, pool);
		if (rc == AIQ_OK)
			rc = value_from_json(&e[i].value, val, pool, depth + 1);
		if (rc != AIQ_OK)
			return rc;
		i++;
	}
	out->num_entries = i;
	out->entries = e;
	return AIQ_OK;
}

static int value_from_json(amqp_field_value_t *out, const json_t *v, amqp_pool_t *pool, int depth)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		out->kind = AMQP_FIELD_KIND_UTF8;
		return copy_bytes(&out->value.bytes, json_string_value(v), json_string_length(v),
		                  pool);
	case JSON_NULL: out->kind = AMQP_FIELD_KIND_VOID; return AIQ_OK;
	case JSON_TRUE:
	case JSON_FALSE:
		out->kind = AMQP_FIELD_KIND_BOOLEAN;
		out->value.boolean = json_is_true(v);
		return AIQ_OK;
	case JSON_INTEGER: {
		json_int_t i = json_integer_value(v);
		if (i >= INT32_MIN && i <= INT32_MAX) {
			out->kind = AMQP_FIELD_KIND_I32;
			out->value.i32 = (int32_t)i;
		} else {
			out->kind = AMQP_FIELD_KIND_I64;
			out->value.i64 = (int64_t)i;
		}
		return AIQ_OK;
	}
	case JSON_REAL:
		out->kind = AMQP_FIELD_KIND_F64;
		out->value.f64 = json_real_value(v);
		return AIQ_OK;
	case JSON_OBJECT:
		out->kind = AMQP_FIELD_KIND_TABLE;
		return table_from_json(&out->value.table, v, pool, depth);
	case JSON_ARRAY: {
		if (depth > MAX_DEPTH)
			return aiq__err(AIQ_EINVAL, "AMQP field array nested deeper than %d levels",
			                MAX_DEPTH);
		out->kind = AMQP_FIELD_KIND_ARRAY;
		size_t n = json_array_size(v);
		out->value.array.num_entries = (int)n;
		out->value.array.entries = NULL;
		if (n == 0)
			return AIQ_OK;
		amqp_field_value_t *a = amqp_pool_alloc(pool, n * sizeof *a);
		if (a == NULL)
			return aiq__err(AIQ_ENOMEM, "out of memory encoding an AMQP field array");
		out->value.array.entries = a;
		for (size_t i = 0; i < n; i++) {
			int rc = value_from_json(&a[i], json_array_get(v, i), pool, depth + 1);
			if (rc != AIQ_OK)
				return rc;
		}
		return AIQ_OK;
	}
	}
	return aiq__err(AIQ_EINVAL, "JSON value of unknown type in AMQP headers");
}

int aiq__amqp_table_from_json(amqp_table_t *out, const json_t *obj, amqp_pool_t *pool)
{
	return table_from_json(out, obj, pool, 0);
}

static json_t *value_to_json(const amqp_field_value_t *v, int depth);

static json_t *table_to_json(const amqp_table_t *t, int depth)
{
	json_t *obj = json_object();
	if (obj == NULL || depth > MAX_DEPTH) {
		json_decref(obj);
		return NULL;
	}
	for (int i = 0; i < t->num_entries; i++) {
		const amqp_table_entry_t *e = &t->entries[i];
		char key[256];
		size_t klen = e->key.len < sizeof key ? e->key.len : sizeof key - 1;
		if (klen) /* an empty key may come with bytes == NULL */
			memcpy(key, e->key.bytes, klen);
		key[klen] = '\0';
		json_t *val = value_to_json(&e->value, depth + 1);
		if (val == NULL || json_object_set_new(obj, key, val) != 0) {
			json_decref(obj);
			return NULL;
		}
	}
	return obj;
}

static json_t *value_to_json(const amqp_field_value_t *v, int depth)
{
	switch (v->kind) {
	case AMQP_FIELD_KIND_UTF8:
	case AMQP_FIELD_KIND_BYTES: {
		const char *s = v->value.bytes.bytes ? v->value.bytes.bytes : "";
		if (!aiq__utf8_valid(s, v->value.bytes.len))
			return v->kind == AMQP_FIELD_KIND_BYTES ? json_null() : NULL;
		return json_stringn(s, v->value.bytes.len);
	}
	case AMQP_FIELD_KIND_VOID: return json_null();
	case AMQP_FIELD_KIND_BOOLEAN: return json_boolean(v->value.boolean);
	case AMQP_FIELD_KIND_I8: return json_integer(v->value.i8);
	case AMQP_FIELD_KIND_U8: return json_integer(v->value.u8);
	case AMQP_FIELD_KIND_I16: return json_integer(v->value.i16);
	case AMQP_FIELD_KIND_U16: return json_integer(v->value.u16);
	case AMQP_FIELD_KIND_I32: return json_integer(v->value.i32);
	case AMQP_FIELD_KIND_U32: return json_integer(v->value.u32);
	case AMQP_FIELD_KIND_I64: return json_integer(v->value.i64);
	case AMQP_FIELD_KIND_U64:
	case AMQP_FIELD_KIND_TIMESTAMP:
		if (v->value.u64 <= (uint64_t)INT64_MAX)
			return json_integer((json_int_t)v->value.u64);
		return json_real((double)v->value.u64);
	case AMQP_FIELD_KIND_F32: return json_real(v->value.f32);
	case AMQP_FIELD_KIND_F64:
		/* JSON has no NaN/Infinity; keep the header, lose the value. */
		return isfinite(v->value.f64) ? json_real(v->value.f64) : json_null();
	case AMQP_FIELD_KIND_DECIMAL: {
		double d = (double)v->value.decimal.value;
		for (unsigned i = 0; i < v->value.decimal.decimals; i++)
			d /= 10.0;
		return json_real(d);
	}
	case AMQP_FIELD_KIND_TABLE: return table_to_json(&v->value.table, depth);
	case AMQP_FIELD_KIND_ARRAY: {
		if (depth > MAX_DEPTH)
			return NULL;
		json_t *a = json_array();
		for (int i = 0; a && i < v->value.array.num_entries; i++) {
			json_t *e = value_to_json(&v->value.array.entries[i], depth + 1);
			if (e == NULL || json_array_append_new(a, e) != 0) {
				json_decref(a);
				return NULL;
			}
		}
		return a;
	}
	}
	return json_null(); /* a tag librabbitmq decoded but we do not know */
}

int aiq__amqp_table_to_json(json_t **out, const amqp_table_t *table)
{
	*out = table_to_json(table, 0);
	if (*out == NULL)
		return aiq__err(AIQ_EPROTO,
		                "AMQP headers cannot be represented as JSON (invalid UTF-8 in a "
		                "string or nesting deeper than %d levels)",
		                MAX_DEPTH);
	return AIQ_OK;
}

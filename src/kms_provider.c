/*-------------------------------------------------------------------------
 * kms_provider.c
 *	  Provider registry: find a provider by the id recorded in a
 *	  ciphertext or by name, and resolve the key for new data keys.
 *-------------------------------------------------------------------------
 */
#include "kms_provider.h"
#include "kms_guc.h"

static const KmsProviderRoutine *const kms_providers[] = {
	&kms_provider_local,
	&kms_provider_aws,
};

const KmsProviderRoutine *
kms_provider_by_id(int id)
{
	for (int i = 0; i < (int) lengthof(kms_providers); i++)
		if ((int) kms_providers[i]->id == id)
			return kms_providers[i];
	return NULL;
}

const KmsProviderRoutine *
kms_provider_by_name(const char *name)
{
	for (int i = 0; i < (int) lengthof(kms_providers); i++)
		if (strcmp(kms_providers[i]->name, name) == 0)
			return kms_providers[i];
	return NULL;
}

const KmsProviderRoutine *
kms_provider_current(void)
{
	const KmsProviderRoutine *p = kms_provider_by_id(kms_guc_provider);

	if (p == NULL)
		elog(ERROR, "kms_pg.provider has unknown value %d", kms_guc_provider);
	return p;
}

const char *
kms_provider_resolve_key(const char *explicit_key)
{
	const char *key = explicit_key;

	if (key == NULL || key[0] == '\0')
		key = kms_guc_key_id;
	if (key == NULL || key[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no key given and kms_pg.key_id is not set"),
				 errhint("Pass a key id or alias to kms_encrypt(), or SET kms_pg.key_id = 'alias/...'.")));
	if (strlen(key) > KMS_KEY_ID_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key identifier is longer than %d bytes", KMS_KEY_ID_MAXLEN)));
	return key;
}

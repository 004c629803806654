/*
 * import: msmtp, ssmtp and nullmailer configurations translated into
 * smarthostd.conf text that the real config loader accepts, authinfo lines
 * with the passwords, and notes for every setting that is not mapped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "config.h"
#include "import.h"

static const struct import_opts all = { "/etc/smarthostd/authinfo",
	"/etc/smarthostd/sender-map", "/etc/smarthostd/aliases", "/home/u",
	"u", IMPORT_F_ALL };

static struct import_result *
msmtp(const char *text, const struct import_opts *o)
{
	struct import_file f = { "/home/u/.msmtprc", text, strlen(text) };

	return import_msmtp(&f, o);
}

static int
has_note(const struct import_result *r, const char *what)
{
	size_t i;

	for (i = 0; i < r->nnotes; i++)
		if (strstr(r->notes[i], what) != NULL)
			return 1;
	return 0;
}

static void
dump(const struct import_result *r)
{
	size_t i;

	cr_log_info("%s", r->config);
	for (i = 0; i < r->nnotes; i++)
		cr_log_info("note: %s", r->notes[i]);
}

Test(msmtp, smoke)
{
	struct import_result *r = msmtp(
	    "defaults\nauth on\ntls on\nlogfile ~/.msmtp.log\n"
	    "account work\nhost smtp.work.example\nport 587\n"
	    "from me@work.example\nuser me@work.example\npassword s3cr3t\n"
	    "account home\nhost mail.home.example\ntls_starttls off\n"
	    "from *@home.example\nuser me\npasswordeval pass show home\n"
	    "account default : work\n", &all);

	dump(r);
	cr_expect_eq(r->error, 0);
	cr_expect(has_note(r, "logfile"));
	import_result_free(r);
}

/*
 * The sender policy (see senderpolicy.h). The map is a flat list of
 * (key, value) grants; lookups are linear, which is fine for the few dozen
 * lines such a file has on a shared host and keeps the structure obvious.
 */
#include <sys/stat.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "fileio.h"
#include "senderpolicy.h"
#include "xmalloc.h"

#define MAP_MAX (16 * 1024 * 1024)
#define GROUPS_MAX 256

struct grant {
	char *key;   /* login or %group */
	char *value; /* address, @domain or * */
};

struct sender_policy {
	enum sender_policy_mode mode;
	char **exempt;
	size_t nexempt;
	struct grant *grants;
	size_t ngrants;
};

struct sender_policy *
sender_policy_new(enum sender_policy_mode mode)
{
	struct sender_policy *p;

	p = xcalloc(1, sizeof(*p));
	p->mode = mode;
	return p;
}

void
sender_policy_free(struct sender_policy *p)
{
	size_t i;

	if (p == NULL)
		return;
	for (i = 0; i < p->nexempt; i++)
		free(p->exempt[i]);
	for (i = 0; i < p->ngrants; i++) {
		free(p->grants[i].key);
		free(p->grants[i].value);
	}
	free(p->exempt);
	free(p->grants);
	free(p);
}

enum sender_policy_mode
sender_policy_mode(const struct sender_policy *p)
{
	return p != NULL ? p->mode : SENDER_POLICY_ANY;
}

void
sender_policy_exempt(struct sender_policy *p, const char *who)
{
	p->exempt = xreallocarray(p->exempt, p->nexempt + 1,
	    sizeof(*p->exempt));
	p->exempt[p->nexempt++] = xstrdup(who);
}

static void
grant_add(struct sender_policy *p, const char *key, const char *v, size_t n)
{
	struct grant *g;

	p->grants = xreallocarray(p->grants, p->ngrants + 1,
	    sizeof(*p->grants));
	g = &p->grants[p->ngrants++];
	g->key = xstrdup(key);
	g->value = xstrndup(v, n);
}

/* A map value: "*", "@domain" or an address with one '@' and no blanks. */
static int
value_valid(const char *v, size_t n)
{
	size_t i;

	if (n == 1 && v[0] == '*')
		return 1;
	if (n < 2 || n > 320)
		return 0;
	for (i = 0; i < n; i++)
		if (isspace((unsigned char)v[i]) || v[i] == '<' || v[i] == '>')
			return 0;
	return memchr(v + 1, '@', n - 1) != NULL || v[0] == '@';
}

/* Parses the values after "key:" on one logical line. */
static int
entry_parse(struct sender_policy *p, const char *key, const char *v,
    size_t n, const char **why)
{
	size_t i = 0, start, end;

	while (i < n) {
		while (i < n && (isspace((unsigned char)v[i]) || v[i] == ','))
			i++;
		if (i == n)
			break;
		start = i;
		while (i < n && v[i] != ',' && !isspace((unsigned char)v[i]))
			i++;
		end = i;
		if (!value_valid(v + start, end - start)) {
			*why = "a value must be an address, @domain or *";
			return -1;
		}
		grant_add(p, key, v + start, end - start);
	}
	return 0;
}

/* One logical line (continuations joined, comment removed). */
static int
line_parse(struct sender_policy *p, char *l, const char **why)
{
	char *colon, *key, *end;
	size_t klen;

	while (isspace((unsigned char)*l))
		l++;
	if (*l == '\0')
		return 0;
	if ((colon = strchr(l, ':')) == NULL) {
		*why = "expected \"user: address, ...\"";
		return -1;
	}
	key = l;
	end = colon;
	while (end > key && isspace((unsigned char)end[-1]))
		end--;
	klen = (size_t)(end - key);
	if (klen == 0 || (key[0] == '%' && klen == 1) ||
	    memchr(key, ' ', klen) != NULL || memchr(key, '\t', klen) !=
	    NULL) {
		*why = "bad user or %group name";
		return -1;
	}
	*end = '\0';
	return entry_parse(p, key, colon + 1, strlen(colon + 1), why);
}

/* Appends one physical line (comment removed) to the logical line. */
static void
logical_add(char **logical, size_t *llen, const char *p, size_t n)
{
	*logical = xreallocarray(*logical, *llen + n + 2, 1);
	memcpy(*logical + *llen, p, n);
	*llen += n;
	(*logical)[(*llen)++] = ' ';
	(*logical)[*llen] = '\0';
}

int
sender_policy_parse_map(struct sender_policy *p, const char *text,
    size_t len, const char *name, char *err, size_t errlen)
{
	char *logical = NULL;
	size_t llen = 0, lineno = 0, startline = 0, pos = 0, n, i;
	const char *why = NULL, *line, *nl, *hash;
	int rc = 0, blank;

	while (pos < len) {
		line = text + pos;
		nl = memchr(line, '\n', len - pos);
		n = nl != NULL ? (size_t)(nl - line) : len - pos;
		pos += n + (nl != NULL);
		lineno++;
		if (memchr(line, '\0', n) != NULL) {
			why = "NUL byte";
			startline = lineno;
			rc = -1;
			break;
		}
		if ((hash = memchr(line, '#', n)) != NULL)
			n = (size_t)(hash - line);
		for (blank = 1, i = 0; i < n && blank; i++)
			blank = isspace((unsigned char)line[i]);
		if (blank)
			continue;
		if (logical != NULL && (line[0] == ' ' || line[0] == '\t')) {
			logical_add(&logical, &llen, line, n);
			continue;
		}
		if (logical != NULL && line_parse(p, logical, &why) == -1) {
			rc = -1;
			break;
		}
		free(logical);
		logical = NULL;
		llen = 0;
		startline = lineno;
		logical_add(&logical, &llen, line, n);
	}
	if (rc == 0 && logical != NULL && line_parse(p, logical, &why) == -1)
		rc = -1;
	free(logical);
	if (rc == -1)
		snprintf(err, errlen, "%s:%zu: %s", name, startline, why);
	return rc;
}

int
sender_policy_load_map(struct sender_policy *p, const char *path,
    char *err, size_t errlen)
{
	struct stat st;
	char *buf;
	int fd, rc;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1 ||
	    fstat(fd, &st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > MAP_MAX) {
		snprintf(err, errlen, "%s: not a regular file of at most %d "
		    "bytes", path, MAP_MAX);
		close(fd);
		return -1;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	if (fileio_pread_all(fd, buf, (size_t)st.st_size, 0) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		close(fd);
		free(buf);
		return -1;
	}
	close(fd);
	rc = sender_policy_parse_map(p, buf, (size_t)st.st_size, path, err,
	    errlen);
	free(buf);
	return rc;
}

/* "local@domain" with domain one of domains, or "local" alone. */
static int
is_own(const char *login, const char *sender, const char *const *domains,
    size_t ndomains)
{
	const char *at = strrchr(sender, '@');
	size_t llen = strlen(login), i;

	if (at == NULL)
		return strcasecmp(sender, login) == 0;
	if ((size_t)(at - sender) != llen ||
	    strncasecmp(sender, login, llen) != 0)
		return 0;
	for (i = 0; i < ndomains; i++)
		if (domains[i] != NULL && strcasecmp(at + 1, domains[i]) == 0)
			return 1;
	return 0;
}

/* 1 if key names who: its login, or "%group" of one of its groups. */
static int
key_matches(const char *key, const struct sender_identity *who)
{
	size_t i;

	if (key[0] != '%')
		return who->login != NULL && strcmp(key, who->login) == 0;
	for (i = 0; i < who->ngroups; i++)
		if (strcmp(key + 1, who->groups[i]) == 0)
			return 1;
	return 0;
}

static int
value_matches(const char *value, const char *sender)
{
	const char *at;

	if (strcmp(value, "*") == 0)
		return 1;
	if (value[0] == '@')
		return (at = strrchr(sender, '@')) != NULL &&
		    strcasecmp(at + 1, value + 1) == 0;
	return strcasecmp(value, sender) == 0;
}

int
sender_policy_check(const struct sender_policy *p,
    const struct sender_identity *who, const char *sender,
    const char *const *domains, size_t ndomains)
{
	size_t i;

	if (p == NULL || p->mode == SENDER_POLICY_ANY || sender[0] == '\0')
		return 0;
	for (i = 0; i < p->nexempt; i++)
		if (key_matches(p->exempt[i], who))
			return 0;
	if (who->login != NULL && is_own(who->login, sender, domains,
	    ndomains))
		return 0;
	if (p->mode == SENDER_POLICY_OWN)
		return -1;
	for (i = 0; i < p->ngrants; i++)
		if (key_matches(p->grants[i].key, who) &&
		    value_matches(p->grants[i].value, sender))
			return 0;
	return -1;
}

int
sender_identity_lookup(uid_t uid, struct sender_identity *who)
{
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp;
	gid_t gids[GROUPS_MAX];
	int ngids = GROUPS_MAX, i;
	char buf[16384];

	memset(who, 0, sizeof(*who));
	who->uid = uid;
	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &pwp) != 0 || pwp == NULL)
		return -1;
	who->login = xstrdup(pw.pw_name);
	/* A user in more than GROUPS_MAX groups is checked against the
	 * first GROUPS_MAX: a %group grant beyond them is not seen. */
	if (getgrouplist(who->login, pw.pw_gid, gids, &ngids) == -1)
		ngids = GROUPS_MAX;
	who->groups = xcalloc((size_t)ngids, sizeof(*who->groups));
	for (i = 0; i < ngids; i++) {
		grp = NULL;
		if (getgrgid_r(gids[i], &gr, buf, sizeof(buf), &grp) == 0 &&
		    grp != NULL)
			who->groups[who->ngroups++] = xstrdup(gr.gr_name);
	}
	return 0;
}

void
sender_identity_free(struct sender_identity *who)
{
	size_t i;

	free(who->login);
	for (i = 0; i < who->ngroups; i++)
		free(who->groups[i]);
	free(who->groups);
	memset(who, 0, sizeof(*who));
}

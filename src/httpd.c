/*
 * The metrics and health endpoint (see httpd.h) on evhttp.
 *
 * libevent 2.1's evhttp has no connection limit and no hook for a
 * connection's end, so the limit is kept here: evhttp asks us for each
 * new connection's bufferevent (evhttp_set_bevcb), and we keep a
 * reference to every one we hand out. bufferevent_free() clears a
 * bufferevent's callbacks before dropping its reference, so one whose
 * event callback is NULL is one evhttp has let go of: a sweep (at each
 * new connection, and every second while any is open) drops our
 * reference, which closes the socket (BEV_OPT_CLOSE_ON_FREE). At
 * HTTPD_MAX_CONNECTIONS the listener is disabled until the sweep finds
 * one gone; clients beyond it wait in the kernel's backlog.
 *
 * Invariants: every request is answered from memory on the loop thread
 * (the exposition reads the scheduler's in-memory queue, /health one
 * faccessat(2)); no request body is read (evhttp refuses a body with 413
 * before we see the request).
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "config.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "xmalloc.h"

#define DESC_MAX (NI_MAXHOST + NI_MAXSERV + 4)
#define SWEEP_SECONDS 1

struct httpd {
	struct event_base *base;
	const struct config *cfg;
	struct evhttp *http;
	struct evconnlistener *evl;    /* evhttp's, for the limit */
	struct scheduler *sched;       /* NULL until httpd_start */
	const struct smtp_server *srv;
	char *queue_dir;               /* checked by /health */
	char desc[DESC_MAX];
	int stopping;
	int paused;                    /* listener disabled at the limit */
	struct bufferevent **conns;    /* each holds our reference */
	size_t nconns;
	struct event *sweep_ev;
};

static const char *
method_name(enum evhttp_cmd_type type)
{
	switch (type) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	}
	return "?";
}

/* ---- the connection limit ---- */

static void
conns_sweep(struct httpd *h)
{
	bufferevent_event_cb eventcb;
	size_t i = 0;

	while (i < h->nconns) {
		bufferevent_getcb(h->conns[i], NULL, NULL, &eventcb, NULL);
		if (eventcb != NULL) {
			i++;
			continue;
		}
		bufferevent_disable(h->conns[i], EV_READ | EV_WRITE);
		bufferevent_decref(h->conns[i]);
		h->conns[i] = h->conns[--h->nconns];
	}
	if (h->paused && h->nconns < HTTPD_MAX_CONNECTIONS) {
		h->paused = 0;
		evconnlistener_enable(h->evl);
	}
	if (h->nconns == 0)
		evtimer_del(h->sweep_ev);
}

static void
sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	conns_sweep(arg);
}

static struct bufferevent *
conn_bev_cb(struct event_base *base, void *arg)
{
	struct httpd *h = arg;
	struct timeval tv = { SWEEP_SECONDS, 0 };
	struct bufferevent *bev;

	conns_sweep(h);
	if ((bev = bufferevent_socket_new(base, -1,
	    BEV_OPT_CLOSE_ON_FREE)) == NULL)
		return NULL; /* evhttp makes its own: not counted */
	/* Bounds what a connection evhttp has let go of can read before
	 * the sweep; evhttp itself stops at HTTPD_MAX_HEADERS. */
	bufferevent_setwatermark(bev, EV_READ, 0, 2 * HTTPD_MAX_HEADERS);
	bufferevent_incref(bev);
	h->conns = xreallocarray(h->conns, h->nconns + 1, sizeof(*h->conns));
	h->conns[h->nconns++] = bev;
	if (h->nconns >= HTTPD_MAX_CONNECTIONS && !h->paused) {
		h->paused = 1;
		evconnlistener_disable(h->evl);
		log_warnx("metrics: %d connections open; new ones wait",
		    HTTPD_MAX_CONNECTIONS);
	}
	if (!evtimer_pending(h->sweep_ev, NULL))
		evtimer_add(h->sweep_ev, &tv);
	return bev;
}

/* ---- requests ---- */

/* The peer's address into host; whether it may ask at all. */
static int
peer_allowed(const struct httpd *h, struct evhttp_request *req, char *host,
    size_t hostlen)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct sockaddr_storage ss;
	socklen_t slen = sizeof(ss);
	int fd;

	snprintf(host, hostlen, "unknown");
	if (evcon == NULL ||
	    (fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon)))
	    == -1 || getpeername(fd, (struct sockaddr *)&ss, &slen) == -1)
		return 0;
	if (getnameinfo((struct sockaddr *)&ss, slen, host, (socklen_t)hostlen,
	    NULL, 0, NI_NUMERICHOST) != 0)
		snprintf(host, hostlen, "unknown");
	return config_peer_allowed(h->cfg, (struct sockaddr *)&ss);
}

/* 200, or 503 with the reason in body. */
static int
health(const struct httpd *h, struct evbuffer *body)
{
	if (h->stopping) {
		evbuffer_add_printf(body, "stopping\n");
		return 503;
	}
	if (h->sched == NULL) {
		evbuffer_add_printf(body, "starting\n");
		return 503;
	}
	if (faccessat(AT_FDCWD, h->queue_dir, W_OK | X_OK, AT_EACCESS) ==
	    -1) {
		evbuffer_add_printf(body, "spool not writable: %s: %s\n",
		    h->queue_dir, strerror(errno));
		return 503;
	}
	evbuffer_add_printf(body, "ok\n");
	return 200;
}

/* The status code; the body into body, its type into *ctype. */
static int
route(struct httpd *h, struct evhttp_request *req, const char *path,
    struct evbuffer *body, const char **ctype)
{
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	enum evhttp_cmd_type type = evhttp_request_get_command(req);
	char *text;

	if (type != EVHTTP_REQ_GET && type != EVHTTP_REQ_HEAD) {
		evhttp_add_header(headers, "Allow", "GET, HEAD");
		evbuffer_add_printf(body, "only GET and HEAD\n");
		return 405;
	}
	if (strcmp(path, "/metrics") == 0) {
		if (h->sched == NULL) {
			evbuffer_add_printf(body, "starting\n");
			return 503;
		}
		text = metrics_collect(h->sched, h->srv);
		evbuffer_add(body, text, strlen(text));
		free(text);
		*ctype = "text/plain; version=0.0.4";
		return 200;
	}
	if (strcmp(path, "/health") == 0)
		return health(h, body);
	evbuffer_add_printf(body, "not found\n");
	return 404;
}

static const char *
status_reason(int code)
{
	switch (code) {
	case 200:
		return "OK";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	default:
		return "Service Unavailable";
	}
}

static void
request_cb(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	const char *ctype = "text/plain; charset=utf-8";
	struct evbuffer *body;
	char host[NI_MAXHOST], safe[128];
	int code;

	if ((body = evbuffer_new()) == NULL) {
		evhttp_send_error(req, 503, NULL);
		return;
	}
	if (!peer_allowed(h, req, host, sizeof(host))) {
		evbuffer_add_printf(body, "not in allow_networks\n");
		code = 403;
	} else
		code = route(h, req, path != NULL ? path : "", body, &ctype);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", ctype);
	log_debug("metrics: %s %s from %s: %d",
	    method_name(evhttp_request_get_command(req)),
	    log_sanitize(safe, sizeof(safe), evhttp_request_get_uri(req),
	    strlen(evhttp_request_get_uri(req))), host, code);
	evhttp_send_reply(req, code, status_reason(code), body);
	evbuffer_free(body);
}

/* ---- setup ---- */

static int
bind_socket(const struct config *cfg, char *desc, size_t desclen, char *err,
    size_t errlen)
{
	struct addrinfo hints, *res = NULL;
	struct sockaddr_storage ss;
	socklen_t slen = sizeof(ss);
	char port[8], host[NI_MAXHOST], serv[NI_MAXSERV];
	int fd = -1, one = 1, r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	snprintf(port, sizeof(port), "%u", cfg->metrics_port);
	if ((r = getaddrinfo(cfg->metrics_address, port, &hints, &res)) != 0) {
		snprintf(err, errlen, "metrics_listen %s port %s: %s",
		    cfg->metrics_address, port, gai_strerror(r));
		return -1;
	}
	if ((fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ==
	    -1 ||
	    (res->ai_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6,
	    IPV6_V6ONLY, &one, sizeof(one)) == -1) ||
	    bind(fd, res->ai_addr, res->ai_addrlen) == -1 ||
	    listen(fd, SOMAXCONN) == -1 ||
	    getsockname(fd, (struct sockaddr *)&ss, &slen) == -1 ||
	    getnameinfo((struct sockaddr *)&ss, slen, host, sizeof(host),
	    serv, sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(err, errlen, "metrics_listen %s%s%s:%s: %s",
		    res->ai_family == AF_INET6 ? "[" : "",
		    cfg->metrics_address, res->ai_family == AF_INET6 ? "]" : "",
		    port, strerror(errno));
		if (fd != -1)
			close(fd);
		freeaddrinfo(res);
		return -1;
	}
	snprintf(desc, desclen, "%s%s%s:%s", ss.ss_family == AF_INET6 ? "[" :
	    "", host, ss.ss_family == AF_INET6 ? "]" : "", serv);
	freeaddrinfo(res);
	return fd;
}

struct httpd *
httpd_open(struct event_base *base, const struct config *cfg, char *err,
    size_t errlen)
{
	struct evhttp_bound_socket *bound;
	struct httpd *h;
	int fd;

	h = xcalloc(1, sizeof(*h));
	h->base = base;
	h->cfg = cfg;
	h->queue_dir = xasprintf("%s/queue", cfg->spool);
	if ((fd = bind_socket(cfg, h->desc, sizeof(h->desc), err, errlen)) ==
	    -1)
		goto fail;
	if ((h->http = evhttp_new(base)) == NULL ||
	    (h->sweep_ev = event_new(base, -1, EV_PERSIST, sweep_cb, h)) ==
	    NULL) {
		close(fd);
		snprintf(err, errlen, "metrics_listen: cannot set up the "
		    "HTTP server");
		goto fail;
	}
	if ((bound = evhttp_accept_socket_with_handle(h->http, fd)) == NULL) {
		close(fd);
		snprintf(err, errlen, "metrics_listen %s: cannot accept",
		    h->desc);
		goto fail;
	}
	h->evl = evhttp_bound_socket_get_listener(bound);
	evhttp_set_max_headers_size(h->http, HTTPD_MAX_HEADERS);
	evhttp_set_max_body_size(h->http, 0);
	evhttp_set_timeout(h->http, HTTPD_TIMEOUT);
	/* Every method reaches request_cb, which answers 405 itself with
	 * an Allow header (evhttp would say 501). */
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
	    EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
	    EVHTTP_REQ_PATCH);
	evhttp_set_bevcb(h->http, conn_bev_cb, h);
	evhttp_set_gencb(h->http, request_cb, h);
	return h;

fail:
	httpd_free(h);
	return NULL;
}

void
httpd_start(struct httpd *h, struct scheduler *sched,
    const struct smtp_server *srv)
{
	h->sched = sched;
	h->srv = srv;
}

void
httpd_set_config(struct httpd *h, const struct config *cfg)
{
	if (h != NULL)
		h->cfg = cfg;
}

void
httpd_stopping(struct httpd *h)
{
	if (h != NULL)
		h->stopping = 1;
}

const char *
httpd_describe(const struct httpd *h)
{
	return h->desc;
}

void
httpd_free(struct httpd *h)
{
	size_t i;

	if (h == NULL)
		return;
	if (h->http != NULL)
		evhttp_free(h->http);
	for (i = 0; i < h->nconns; i++)
		bufferevent_decref(h->conns[i]);
	free(h->conns);
	if (h->sweep_ev != NULL)
		event_free(h->sweep_ev);
	free(h->queue_dir);
	free(h);
}

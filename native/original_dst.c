/*
 * original_dst: reads the destination a connection had before iptables REDIRECT
 * rewrote it (getsockopt SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST). Node has no API
 * for this and no maintained npm package offers it, so zmesh carries these lines.
 * Exposed as originalDst(fd) -> { address, port, family } or throws with errno.
 */
#include <node_api.h>
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, "ZMESH_ORIGINAL_DST", msg);
  return NULL;
}

static napi_value original_dst(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "originalDst(fd): fd must be a non-negative integer");
    return NULL;
  }
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  memset(&ss, 0, sizeof ss);
  int family = 4;
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &ss, &len) != 0) {
    int err4 = errno;
    len = sizeof ss;
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &ss, &len) != 0) {
      return throw_errno(env, "getsockopt(SO_ORIGINAL_DST)", err4);
    }
    family = 6;
  }
  char addr[INET6_ADDRSTRLEN];
  int port;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &sin->sin_addr, addr, sizeof addr);
    port = ntohs(sin->sin_port);
    family = 4;
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &sin6->sin6_addr, addr, sizeof addr);
    port = ntohs(sin6->sin6_port);
    family = 6;
  } else {
    return throw_errno(env, "getsockopt(SO_ORIGINAL_DST) returned an unknown family", EAFNOSUPPORT);
  }
  napi_value result, v_addr, v_port, v_family;
  napi_create_object(env, &result);
  napi_create_string_utf8(env, addr, NAPI_AUTO_LENGTH, &v_addr);
  napi_create_int32(env, port, &v_port);
  napi_create_int32(env, family, &v_family);
  napi_set_named_property(env, result, "address", v_addr);
  napi_set_named_property(env, result, "port", v_port);
  napi_set_named_property(env, result, "family", v_family);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "originalDst", NAPI_AUTO_LENGTH, original_dst, NULL, &fn);
  napi_set_named_property(env, exports, "originalDst", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

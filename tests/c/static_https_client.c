/*
 * An HTTPS client linked with OpenSSL statically (libssl.a, libcrypto.a), for the meshtap
 * TLS tests: its executable holds SSL_read/SSL_write itself (in its symbol table), as Node's
 * does, rather than mapping libssl.so.
 *
 * usage: static_https_client PORT PATH N
 *
 * Waits for a line on stdin (the test first makes sure the agent probes this executable),
 * then opens one TLS connection to 127.0.0.1:PORT (certificate not checked) and sends N
 * keep-alive `GET PATH` requests, reading each response (Content-Length bodies). Prints
 * `{"event":"done","responses":R,"ok":K}` (K: status 200).
 *
 * With MESHTAP_WRITE_EX2=1 in its environment it writes with SSL_write_ex2 (OpenSSL 3.3 and
 * newer), looked up at run time (the headers it is built with may be older); it exits with 3
 * if the libssl it runs with has none.
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <stdint.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int read_response(SSL *ssl, int *status) {
    char buf[16384];
    size_t have = 0;
    for (;;) {
        int n = SSL_read(ssl, buf + have, (int)(sizeof(buf) - 1 - have));
        if (n <= 0) return -1;
        have += (size_t)n;
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) continue;
        const char *cl = strstr(buf, "Content-Length: ");
        size_t body = cl ? (size_t)atol(cl + 16) : 0;
        size_t head = (size_t)(end + 4 - buf);
        while (have < head + body) {
            n = SSL_read(ssl, buf + have, (int)(sizeof(buf) - 1 - have));
            if (n <= 0) return -1;
            have += (size_t)n;
        }
        *status = atoi(buf + 9);
        return 0;
    }
}

typedef int (*write_ex2_fn)(SSL *, const void *, size_t, uint64_t, size_t *);

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT PATH N\n", argv[0]);
        return 2;
    }
    write_ex2_fn write_ex2 = NULL;
    const char *ex2 = getenv("MESHTAP_WRITE_EX2");
    if (ex2 && strcmp(ex2, "1") == 0) {
        write_ex2 = (write_ex2_fn)dlsym(RTLD_DEFAULT, "SSL_write_ex2");
        if (!write_ex2) {
            fprintf(stderr, "SSL_write_ex2 not found: OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION));
            return 3;
        }
    }
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;
    int port = atoi(argv[1]), n = atoi(argv[3]);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        return 1;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    char req[512];
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", argv[2]);
    int responses = 0, ok = 0;
    for (int i = 0; i < n; i++) {
        int status = 0;
        if (write_ex2) {
            size_t written = 0;
            if (write_ex2(ssl, req, (size_t)len, 0, &written) != 1 || written != (size_t)len) break;
        } else if (SSL_write(ssl, req, len) != len) {
            break;
        }
        if (read_response(ssl, &status) != 0) break;
        responses++;
        if (status == 200) ok++;
    }
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    printf("{\"event\":\"done\",\"responses\":%d,\"ok\":%d}\n", responses, ok);
    return 0;
}

/*
 * The transport glue for an ESP32 (ESP-IDF v5.x): esp-tls gives TCP or TLS
 * over lwIP + mbedTLS, esp_timer the clock, esp_fill_random the entropy
 * (the RF subsystem must be on, i.e. Wi-Fi started, for true randomness),
 * NVS the persistence. Wi-Fi setup is left to the usual example_connect()
 * or your own code. Not compiled in CI unless an ESP-IDF toolchain is
 * installed (see ../README.md).
 */
#include <string.h>
#include <sys/select.h>

#include "esp_crt_bundle.h"
#include "esp_log.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "esp_tls.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "nvs.h"
#include "nvs_flash.h"

#include "meridian.h"

#define HOST CONFIG_MERIDIAN_HOST   /* e.g. "meridian.example.com" (menuconfig) */
#define PORT 443
#define TOKEN CONFIG_MERIDIAN_TOKEN /* better: read it from NVS provisioned at the factory */

static const char *TAG = "meridian";
static mer_client_t client; /* static: about 17 KB with the sizes in main/CMakeLists.txt */
static esp_tls_t *tls;
static nvs_handle_t nvs;

static int t_connect(void *ctx, const char *host, uint16_t port, int use_tls, uint32_t timeout_ms)
{
	esp_tls_cfg_t cfg = {
		.crt_bundle_attach = esp_crt_bundle_attach,
		.timeout_ms = (int)timeout_ms,
		.is_plain_tcp = !use_tls,
	};
	(void)ctx;
	tls = esp_tls_init();
	if (!tls)
		return -1;
	if (esp_tls_conn_new_sync(host, (int)strlen(host), port, &cfg, tls) != 1) {
		esp_tls_conn_destroy(tls);
		tls = NULL;
		return -1;
	}
	return 0;
}

static long t_read(void *ctx, uint8_t *buf, size_t cap, uint32_t timeout_ms)
{
	int fd;
	fd_set rd;
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	ssize_t n;
	(void)ctx;
	/* mbedTLS may already hold decrypted bytes the socket no longer shows */
	if (esp_tls_get_bytes_avail(tls) <= 0) {
		if (esp_tls_get_conn_sockfd(tls, &fd) != ESP_OK)
			return -1;
		FD_ZERO(&rd);
		FD_SET(fd, &rd);
		n = select(fd + 1, &rd, NULL, NULL, &tv);
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
	}
	n = esp_tls_conn_read(tls, buf, cap);
	if (n == ESP_TLS_ERR_SSL_WANT_READ || n == ESP_TLS_ERR_SSL_WANT_WRITE)
		return 0;
	return n > 0 ? (long)n : -1;
}

static long t_write(void *ctx, const uint8_t *buf, size_t len)
{
	size_t done = 0;
	(void)ctx;
	while (done < len) {
		ssize_t n = esp_tls_conn_write(tls, buf + done, len - done);
		if (n == ESP_TLS_ERR_SSL_WANT_READ || n == ESP_TLS_ERR_SSL_WANT_WRITE)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return (long)len;
}

static void t_close(void *ctx)
{
	(void)ctx;
	if (tls)
		esp_tls_conn_destroy(tls);
	tls = NULL;
}

static uint32_t now_ms(void *ctx)
{
	(void)ctx;
	return (uint32_t)(esp_timer_get_time() / 1000);
}

static void entropy(void *ctx, uint8_t *buf, size_t n)
{
	(void)ctx;
	esp_fill_random(buf, n);
}

/* NVS keys are strings of at most 15 characters: "meta", "s0".."s15". */
static void nvs_key(uint32_t key, char out[8])
{
	if (key == MER_STORE_META)
		strcpy(out, "meta");
	else
		snprintf(out, 8, "s%u", (unsigned)key);
}

static int st_save(void *ctx, uint32_t key, const void *data, size_t len)
{
	char k[8];
	(void)ctx;
	nvs_key(key, k);
	return nvs_set_blob(nvs, k, data, len) == ESP_OK && nvs_commit(nvs) == ESP_OK ? 0 : -1;
}

static long st_load(void *ctx, uint32_t key, void *data, size_t cap)
{
	char k[8];
	size_t len = cap;
	esp_err_t err;
	(void)ctx;
	nvs_key(key, k);
	err = nvs_get_blob(nvs, k, data, &len);
	if (err == ESP_ERR_NVS_NOT_FOUND)
		return 0;
	return err == ESP_OK ? (long)len : -1;
}

static void on_ack(void *user, const mer_ack_t *a)
{
	uint32_t i;
	(void)user;
	for (i = 0; i < a->nerrors; i++) /* firmware or clock problems: log, never resend */
		ESP_LOGW(TAG, "seq %llu: %.*s", (unsigned long long)a->seq, (int)a->errors[i].n, a->errors[i].p);
}

static void on_command(void *user, const mer_command_t *cmd, mer_result_t *res)
{
	(void)user;
	ESP_LOGI(TAG, "command %.*s", (int)cmd->name.n, cmd->name.p);
	res->ok = cmd->name.n == 4 && memcmp(cmd->name.p, "ping", 4) == 0;
}

static void on_closed(void *user, int code, mer_str_t reason, mer_str_t msg, uint32_t wait_ms)
{
	(void)user;
	ESP_LOGW(TAG, "closed %d %.*s %.*s, retry in %u ms", code, (int)reason.n, reason.p, (int)msg.n, msg.p,
		 (unsigned)wait_ms);
}

void app_main(void)
{
	mer_config_t cfg = {0};
	ESP_ERROR_CHECK(nvs_flash_init());
	ESP_ERROR_CHECK(nvs_open("meridian", NVS_READWRITE, &nvs));
	/* ... start Wi-Fi and wait for an IP here ... */

	cfg.host = HOST;
	cfg.port = PORT;
	cfg.tls = 1;
	cfg.token = TOKEN;
	cfg.transport = (mer_transport_t){t_connect, t_read, t_write, t_close, NULL};
	cfg.now_ms = now_ms;
	cfg.random = entropy;
	cfg.store = (mer_store_t){st_save, st_load, NULL};
	cfg.on.on_ack = on_ack;
	cfg.on.on_command = on_command;
	cfg.on.on_closed = on_closed;
	ESP_ERROR_CHECK(mer_init(&client, &cfg) == MER_OK ? ESP_OK : ESP_FAIL);

	for (;;) {
		static uint32_t last;
		if (now_ms(NULL) - last >= 1000) {
			/* no RTC here: stamp from the server's clock once a hello came */
			int64_t t = mer_server_time_ms(&client);
			last = now_ms(NULL);
			if (mer_add_float(&client, t ? t : MER_NO_TIME, "heap.free", (double)esp_get_free_heap_size()) == MER_EFULL)
				ESP_LOGW(TAG, "ring full: sample dropped");
		}
		if (mer_poll(&client, 100) == MER_EWAIT)
			vTaskDelay(pdMS_TO_TICKS(100));
	}
}

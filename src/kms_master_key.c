/*-------------------------------------------------------------------------
 * kms_master_key.c
 *	  Load the local provider's master key from a file or a command.
 *
 * The master key is 64 hexadecimal characters (32 bytes), optionally
 * followed by white space.  It is read:
 *	- from kms_pg.master_key_file: owner-only (no group or world access);
 *	  re-read when the file changes (stat identity);
 *	- or from the standard output of kms_pg.master_key_command: the
 *	  command line is split at white space and run directly with execv()
 *	  (no shell, absolute program path), standard input from /dev/null,
 *	  in its own process group, killed when it runs longer than
 *	  kms_pg.master_key_command_timeout; the key it printed is kept for
 *	  the life of the backend or until the setting changes.
 * kms_pg.previous_master_key_file / _command name the key being rotated
 * away from (kms_rotate_master_key).  Every failure is an ERROR with its
 * own SQLSTATE; there is no fallback to another source.  The key is never
 * logged; a fingerprint (SHA-256 of a label and the key, 8 bytes in hex)
 * names it in the catalog and in messages.
 *-------------------------------------------------------------------------
 */
#include "kms_master_key.h"
#include "kms_errors.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/timestamp.h"

char	   *kms_guc_master_key_file = NULL;
char	   *kms_guc_master_key_command = NULL;
char	   *kms_guc_previous_master_key_file = NULL;
char	   *kms_guc_previous_master_key_command = NULL;
int			kms_guc_master_key_command_timeout_ms = 10000;

#define FP_LABEL		"kms_pg master key fingerprint v1"
#define MAX_OUTPUT		1024
#define MAX_ARGS		32

/* One cached key per slot (current, previous) and the source it came from. */
typedef struct MasterSlot
{
	bool		valid;
	bool		from_file;
	char		source[MAXPGPATH + 1024];
	struct stat st;
	KmsMasterKey mk;
} MasterSlot;

static MasterSlot slots[2];

void
kms_master_key_fingerprint(const uint8 *key, char *out)
{
	uint8		md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	static const char hex[] = "0123456789abcdef";

	if (ctx == NULL ||
		EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
		EVP_DigestUpdate(ctx, FP_LABEL, sizeof(FP_LABEL)) != 1 ||
		EVP_DigestUpdate(ctx, key, KMS_MASTER_KEY_LEN) != 1 ||
		EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
	{
		EVP_MD_CTX_free(ctx);
		kms_report_openssl_error("SHA-256");
	}
	EVP_MD_CTX_free(ctx);
	for (int i = 0; i < KMS_MASTER_FP_LEN / 2; i++)
	{
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[KMS_MASTER_FP_LEN] = '\0';
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parse 64 hex digits and optional trailing white space; false if malformed. */
static bool
parse_key(const char *buf, int len, uint8 *out)
{
	int			i;

	if (len < 2 * KMS_MASTER_KEY_LEN)
		return false;
	for (i = 0; i < KMS_MASTER_KEY_LEN; i++)
	{
		int			hi = hexval(buf[2 * i]);
		int			lo = hexval(buf[2 * i + 1]);

		if (hi < 0 || lo < 0)
		{
			explicit_bzero(out, KMS_MASTER_KEY_LEN);
			return false;
		}
		out[i] = (uint8) ((hi << 4) | lo);
	}
	for (i = 2 * KMS_MASTER_KEY_LEN; i < len; i++)
		if (!isspace((unsigned char) buf[i]))
		{
			explicit_bzero(out, KMS_MASTER_KEY_LEN);
			return false;
		}
	return true;
}

static void
resolve_path(const char *setting, char *path)
{
	if (is_absolute_path(setting))
		strlcpy(path, setting, MAXPGPATH);
	else
		snprintf(path, MAXPGPATH, "%s/%s", DataDir, setting);
}

static void
read_key_file(const char *guc, const char *path, struct stat *st, uint8 *key)
{
	int			fd;
	char		buf[MAX_OUTPUT];
	ssize_t		got = 0;
	bool		ok;

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FILE),
					 errmsg("kms_pg master key file \"%s\" does not exist", path),
					 errdetail("%s names it.", guc),
					 errhint("Restore the master key file from its backup; without it no local key can be used.")));
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not open kms_pg master key file \"%s\": %m", path)));
	}
	if (fstat(fd, st) != 0)
	{
		int			save = errno;

		CloseTransientFile(fd);
		errno = save;
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not stat kms_pg master key file \"%s\": %m", path)));
	}
	if ((st->st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		CloseTransientFile(fd);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("kms_pg master key file \"%s\" has group or world access", path),
				 errdetail("The master key unlocks every local key; only the database server's OS user may read it."),
				 errhint("chmod 0600 the file.")));
	}
	while (got < (ssize_t) sizeof(buf))
	{
		ssize_t		r = read(fd, buf + got, sizeof(buf) - got);

		if (r < 0)
		{
			int			save = errno;

			CloseTransientFile(fd);
			explicit_bzero(buf, sizeof(buf));
			errno = save;
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("could not read kms_pg master key file \"%s\": %m", path)));
		}
		if (r == 0)
			break;
		got += r;
	}
	CloseTransientFile(fd);
	ok = got < (ssize_t) sizeof(buf) && parse_key(buf, (int) got, key);
	explicit_bzero(buf, sizeof(buf));
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("kms_pg master key file \"%s\" does not hold a master key", path),
				 errdetail("A master key is 64 hexadecimal characters (32 bytes), optionally followed by a newline.")));
}

static void
kill_and_reap(pid_t pid)
{
	int			status;

	kill(-pid, SIGKILL);
	kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
}

/*
 * Read the command's output until it closes it, then reap it, all before
 * deadline; returns the number of bytes read into buf (MAX_OUTPUT).  Any
 * ERROR (the caller kills the child): timeout, too much output, a cancel.
 */
static int
wait_for_command(const char *guc, pid_t pid, int fd, TimestampTz deadline, char *buf, int *status)
{
	int			got = 0;
	bool		eof = false;

	for (;;)
	{
		long		left;

		CHECK_FOR_INTERRUPTS();
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (left <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("kms_pg master key command timed out after %d ms", kms_guc_master_key_command_timeout_ms),
					 errdetail("%s did not finish in time and was killed.", guc),
					 errhint("Check the secret manager the command talks to, or raise kms_pg.master_key_command_timeout.")));
		if (!eof)
		{
			struct pollfd pfd = {.fd = fd,.events = POLLIN};
			int			rc = poll(&pfd, 1, (int) Min(left, 100));

			if (rc < 0 && errno != EINTR)
				ereport(ERROR, (errcode_for_file_access(), errmsg("could not poll the kms_pg master key command: %m")));
			if (rc > 0)
			{
				ssize_t		r = read(fd, buf + got, MAX_OUTPUT - got);

				if (r > 0)
				{
					got += r;
					if (got >= MAX_OUTPUT)
						ereport(ERROR,
								(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
								 errmsg("kms_pg master key command printed no valid master key"),
								 errdetail("%s printed more than %d bytes.", guc, MAX_OUTPUT - 1)));
				}
				else if (r == 0 || (errno != EINTR && errno != EAGAIN))
					eof = true;		/* output closed: wait for the exit */
			}
		}
		else
		{
			pid_t		w = waitpid(pid, status, WNOHANG);

			if (w == pid)
				return got;
			if (w < 0 && errno != EINTR)
				ereport(ERROR, (errcode_for_file_access(), errmsg("could not wait for the kms_pg master key command: %m")));
			pg_usleep(Min(left, 10) * 1000L);
		}
	}
}

/*
 * Run the command line (split at white space, no shell) and parse what it
 * prints on standard output.
 */
static void
run_key_command(const char *guc, const char *cmdline, uint8 *key)
{
	char	   *copy = pstrdup(cmdline);
	char	   *argv[MAX_ARGS + 1];
	int			argc = 0;
	char	   *save = NULL;
	int			fds[2];
	pid_t		pid;
	char		buf[MAX_OUTPUT];
	int			got = 0;
	TimestampTz deadline;
	int			status = 0;
	volatile bool child_alive;
	bool		ok;

	for (char *tok = strtok_r(copy, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save))
	{
		if (argc == MAX_ARGS)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("%s has more than %d arguments", guc, MAX_ARGS)));
		argv[argc++] = tok;
	}
	argv[argc] = NULL;
	if (argc == 0 || !is_absolute_path(argv[0]))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("%s must start with an absolute program path", guc),
				 errdetail("The command is run without a shell: arguments are separated by spaces, with no quoting.")));

	if (pipe(fds) != 0)
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not create a pipe: %m")));
	fflush(NULL);
	pid = fork();
	if (pid < 0)
	{
		close(fds[0]);
		close(fds[1]);
		ereport(ERROR, (errcode_for_file_access(), errmsg("could not fork the kms_pg master key command: %m")));
	}
	if (pid == 0)
	{
		/* child: only async-signal-safe calls until execv */
		sigset_t	none;
		int			devnull;
		long		maxfd = sysconf(_SC_OPEN_MAX);
		static const int sigs[] = {SIGPIPE, SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2,
		SIGALRM, SIGCHLD};

		setpgid(0, 0);
		for (int i = 0; i < (int) lengthof(sigs); i++)
			signal(sigs[i], SIG_DFL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		devnull = open("/dev/null", O_RDONLY);
		if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(fds[1], 1) < 0)
			_exit(127);
		if (maxfd < 0 || maxfd > 65536)
			maxfd = 65536;
		for (int fd = 3; fd < maxfd; fd++)
			close(fd);
		execv(argv[0], argv);
		_exit(127);
	}
	close(fds[1]);
	pfree(copy);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), kms_guc_master_key_command_timeout_ms);
	child_alive = true;
	PG_TRY();
	{
		got = wait_for_command(guc, pid, fds[0], deadline, buf, &status);
		child_alive = false;
	}
	PG_CATCH();
	{
		/* timeout, too much output, cancel or termination: no child is left behind */
		if (child_alive)
			kill_and_reap(pid);
		child_alive = false;
		close(fds[0]);
		explicit_bzero(buf, sizeof(buf));
		PG_RE_THROW();
	}
	PG_END_TRY();
	close(fds[0]);

	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
	{
		explicit_bzero(buf, sizeof(buf));
		if (WIFEXITED(status))
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("kms_pg master key command failed"),
					 errdetail("%s exited with status %d%s.", guc, WEXITSTATUS(status),
							   WEXITSTATUS(status) == 127 ? " (program not found or not executable)" : ""),
					 errhint("The command's standard error is in the server log.")));
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("kms_pg master key command failed"),
				 errdetail("%s was terminated by signal %d.", guc,
						   WIFSIGNALED(status) ? WTERMSIG(status) : 0)));
	}
	ok = parse_key(buf, got, key);
	explicit_bzero(buf, sizeof(buf));
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("kms_pg master key command printed no valid master key"),
				 errdetail("%s must print 64 hexadecimal characters (32 bytes), optionally followed by a newline.",
						   guc)));
}

/* Load slot i from (file, command); false when neither is set. */
static bool
load_slot(int i, const char *file_guc, const char *file, const char *cmd_guc, const char *cmd)
{
	MasterSlot *s = &slots[i];
	bool		have_file = file != NULL && file[0] != '\0';
	bool		have_cmd = cmd != NULL && cmd[0] != '\0';
	char		path[MAXPGPATH];
	uint8		key[KMS_MASTER_KEY_LEN];

	if (have_file && have_cmd)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("%s and %s are both set", file_guc, cmd_guc),
				 errhint("Set exactly one source for the master key.")));
	if (!have_file && !have_cmd)
	{
		if (s->valid)
			explicit_bzero(&s->mk, sizeof(s->mk));
		s->valid = false;
		return false;
	}
	if (have_file)
	{
		struct stat st;

		resolve_path(file, path);
		if (s->valid && s->from_file && strcmp(s->source, path) == 0 &&
			stat(path, &st) == 0 && st.st_dev == s->st.st_dev && st.st_ino == s->st.st_ino &&
			st.st_size == s->st.st_size && st.st_mtim.tv_sec == s->st.st_mtim.tv_sec &&
			st.st_mtim.tv_nsec == s->st.st_mtim.tv_nsec && (st.st_mode & (S_IRWXG | S_IRWXO)) == 0)
			return true;
		read_key_file(file_guc, path, &st, key);
		explicit_bzero(&s->mk, sizeof(s->mk));
		memcpy(s->mk.key, key, sizeof(key));
		s->st = st;
		s->from_file = true;
		strlcpy(s->source, path, sizeof(s->source));
	}
	else
	{
		if (s->valid && !s->from_file && strcmp(s->source, cmd) == 0)
			return true;
		s->valid = false;
		run_key_command(cmd_guc, cmd, key);
		explicit_bzero(&s->mk, sizeof(s->mk));
		memcpy(s->mk.key, key, sizeof(key));
		s->from_file = false;
		strlcpy(s->source, cmd, sizeof(s->source));
	}
	explicit_bzero(key, sizeof(key));
	kms_master_key_fingerprint(s->mk.key, s->mk.fingerprint);
	s->valid = true;
	return true;
}

const KmsMasterKey *
kms_master_key_current(void)
{
	if (!load_slot(0, "kms_pg.master_key_file", kms_guc_master_key_file,
				   "kms_pg.master_key_command", kms_guc_master_key_command))
	{
		if (RecoveryInProgress())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("this standby has the kms_pg keyring but no master key"),
					 errdetail("Neither kms_pg.master_key_file nor kms_pg.master_key_command is set on this server."),
					 errhint("Configure the primary's master key on every standby before it may serve or be promoted.")));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FILE),
				 errmsg("no kms_pg master key is configured"),
				 errdetail("Local keys are stored wrapped under a master key kept outside the database."),
				 errhint("Set kms_pg.master_key_file or kms_pg.master_key_command in postgresql.conf and reload.")));
	}
	return &slots[0].mk;
}

const KmsMasterKey *
kms_master_key_previous(void)
{
	if (!load_slot(1, "kms_pg.previous_master_key_file", kms_guc_previous_master_key_file,
				   "kms_pg.previous_master_key_command", kms_guc_previous_master_key_command))
		return NULL;
	return &slots[1].mk;
}

const KmsMasterKey *
kms_master_key_for(const char *fp, const char *what)
{
	const KmsMasterKey *cur = kms_master_key_current();
	const KmsMasterKey *prev;

	if (strcmp(cur->fingerprint, fp) == 0)
		return cur;
	prev = kms_master_key_previous();
	if (prev != NULL && strcmp(prev->fingerprint, fp) == 0)
		return prev;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PASSWORD),
			 errmsg("wrong kms_pg master key for %s", what),
			 errdetail("The keyring row is wrapped under the master key with fingerprint %s; the configured master key has fingerprint %s%s%s.",
					   fp, cur->fingerprint, prev ? ", the previous one " : "", prev ? prev->fingerprint : ""),
			 errhint("Configure the master key this keyring was written with (see kms_master_key_info()).")));
	return NULL;				/* keep the compiler quiet */
}

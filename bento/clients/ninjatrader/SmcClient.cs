// SmcClient — the SMC service's client for NinjaTrader 8, with no NinjaTrader types.
//
// C# 7.3 on .NET Framework 4.8 (what NinjaTrader 8 compiles); only the framework's own
// assemblies: System.Net.Http and System.Runtime.Serialization (both referenced by NinjaTrader's
// NinjaScript compiler by default). Built and tested on Linux with Mono's `mcs -langversion:7.2
// -sdk:4.8` against the real service: tests/test_ninjatrader.py.
//
// What it does, mirroring bento/clients/python/smc_client.py:
// - one HttpClient per process, configured once before its first request (.NET refuses a
//   change of Timeout, BaseAddress or MaxResponseContentBufferSize after it; a second chart or
//   a re-enabled strategy must not touch it), so its Timeout stays infinite and every call has
//   its own deadline instead: a CancellationToken covering all attempts and waits;
// - 3 attempts, waiting 100 ms then 200 ms, after transport errors, 5xx and 429 only; any other
//   4xx is the caller's mistake and is raised at once with the server's {error, code, details};
// - JSON through the framework's DataContractJsonSerializer into typed requests and answers;
// - the confidence tiers and the position rule of smc_core/policy.py as pure functions.

using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Runtime.Serialization;
using System.Runtime.Serialization.Json;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Smc.Client
{
    // ---------------------------------------------------------------- request types (DESIGN §6)

    /// <summary>One closed bar; <c>time_utc</c> is its close time in UTC (NinjaTrader stamps bars at their close).</summary>
    [DataContract]
    public sealed class Bar
    {
        [DataMember(Name = "time_utc", Order = 0)] public string TimeUtc { get; set; }
        [DataMember(Name = "o", Order = 1)] public double Open { get; set; }
        [DataMember(Name = "h", Order = 2)] public double High { get; set; }
        [DataMember(Name = "l", Order = 3)] public double Low { get; set; }
        [DataMember(Name = "c", Order = 4)] public double Close { get; set; }
        [DataMember(Name = "volume", Order = 5)] public double Volume { get; set; }
        [DataMember(Name = "delta", Order = 6, EmitDefaultValue = false)] public double? Delta { get; set; }

        public static Bar Of(DateTime closeUtc, double open, double high, double low, double close, double volume,
                             double? delta = null)
        {
            return new Bar { TimeUtc = SmcTime.Format(closeUtc), Open = open, High = high, Low = low, Close = close,
                             Volume = volume, Delta = delta };
        }

        /// <summary>Null when the bar can be sent; else why not (the service would refuse it with a 400 or 422).</summary>
        public string Problem()
        {
            foreach (double value in new[] { Open, High, Low, Close, Volume })
                if (double.IsNaN(value) || double.IsInfinity(value))
                    return "a price or the volume is not a finite number";
            if (Open <= 0 || Low <= 0) return "prices must be > 0";
            if (High < Low) return "high is below low";
            if (Open > High || Open < Low || Close > High || Close < Low) return "open or close lies outside [low, high]";
            if (Volume < 0) return "volume is negative";
            return null;
        }
    }

    [DataContract]
    public sealed class Metadata
    {
        [DataMember(Name = "symbol", Order = 0)] public string Symbol { get; set; }
        [DataMember(Name = "timeframe", Order = 1)] public string Timeframe { get; set; }
        /// <summary>With several model lines for the timeframe, which one (e.g. h15); null: the service's first.</summary>
        [DataMember(Name = "horizon", Order = 2, EmitDefaultValue = false)] public string Horizon { get; set; }
        [DataMember(Name = "session", Order = 3, EmitDefaultValue = false)] public string Session { get; set; }
        [DataMember(Name = "request_time", Order = 4, EmitDefaultValue = false)] public string RequestTime { get; set; }
    }

    /// <summary>POST /predict: the seed-000 request at top level.</summary>
    [DataContract]
    public sealed class PredictRequest
    {
        [DataMember(Name = "context_bars", Order = 0)] public List<Bar> ContextBars { get; set; }
        [DataMember(Name = "current_bar", Order = 1)] public Bar CurrentBar { get; set; }
        /// <summary>Indicator values to compare with the server's (counted, never trusted); empty by default.</summary>
        [DataMember(Name = "features", Order = 2)] public Dictionary<string, double> Features { get; set; }
        [DataMember(Name = "metadata", Order = 3)] public Metadata Metadata { get; set; }

        /// <summary>The request for <paramref name="bars"/> in time order; the last one is the bar that just closed.
        /// <paramref name="horizon"/>: the model line's horizon when the service serves several for the timeframe.</summary>
        public static PredictRequest For(IList<Bar> bars, string symbol, string timeframe, DateTime requestTimeUtc,
                                         string horizon = null)
        {
            if (bars == null || bars.Count < 2)
                throw new ArgumentException("a request needs the current bar and at least one context bar", "bars");
            var context = new List<Bar>(bars.Count - 1);
            for (int i = 0; i < bars.Count - 1; i++)
                context.Add(bars[i]);
            return new PredictRequest
            {
                ContextBars = context, CurrentBar = bars[bars.Count - 1], Features = new Dictionary<string, double>(),
                Metadata = new Metadata { Symbol = symbol, Timeframe = timeframe, Horizon = horizon,
                                          RequestTime = SmcTime.Format(requestTimeUtc) }
            };
        }
    }

    /// <summary>POST /bars: many bars of one series (the strategy's history when it goes real-time).</summary>
    [DataContract]
    public sealed class BarsUpload
    {
        [DataMember(Name = "symbol", Order = 0)] public string Symbol { get; set; }
        [DataMember(Name = "timeframe", Order = 1)] public string Timeframe { get; set; }
        [DataMember(Name = "bars", Order = 2)] public List<Bar> Bars { get; set; }
    }

    // ---------------------------------------------------------------- answer types

    [DataContract]
    public sealed class Probabilities
    {
        [DataMember(Name = "long")] public double Long { get; set; }
        [DataMember(Name = "short")] public double Short { get; set; }
        [DataMember(Name = "skip")] public double Skip { get; set; }
    }

    /// <summary>The protective orders to trade with an answer: the server's ATR and the multiples the
    /// model was validated with, in whole ticks. Prices only for a long or short answer, from the
    /// decision bar's close; the backtest places the same distances from the fill.</summary>
    [DataContract]
    public sealed class Risk
    {
        [DataMember(Name = "atr")] public double Atr { get; set; }
        [DataMember(Name = "stop_price")] public double? StopPrice { get; set; }
        [DataMember(Name = "target_price")] public double? TargetPrice { get; set; }
        [DataMember(Name = "stop_distance")] public double StopDistance { get; set; }
        [DataMember(Name = "target_distance")] public double TargetDistance { get; set; }
        /// <summary>Null: no time exit (the stop, the target or the session close ends a trade).</summary>
        [DataMember(Name = "max_holding_bars")] public int? MaxHoldingBars { get; set; }
        [DataMember(Name = "tick_size")] public double TickSize { get; set; }
    }

    [DataContract]
    public sealed class PredictAnswer
    {
        [DataMember(Name = "label")] public string Label { get; set; }
        [DataMember(Name = "confidence")] public double Confidence { get; set; }
        [DataMember(Name = "probabilities")] public Probabilities Probabilities { get; set; }
        [DataMember(Name = "position_size")] public double PositionSize { get; set; }
        /// <summary>The entry threshold the service applied (its CONFIDENCE_THRESHOLD or the promoted one).</summary>
        [DataMember(Name = "threshold")] public double? Threshold { get; set; }
        [DataMember(Name = "raw_label")] public string RawLabel { get; set; }
        [DataMember(Name = "model_version")] public string ModelVersion { get; set; }
        [DataMember(Name = "request_id")] public string RequestId { get; set; }
        [DataMember(Name = "processing_time_ms")] public double ProcessingTimeMs { get; set; }
        [DataMember(Name = "bars_from_store")] public int BarsFromStore { get; set; }
        [DataMember(Name = "risk")] public Risk Risk { get; set; }

        /// <summary>Null when the answer has what a strategy trades with; else what is missing.</summary>
        public string Problem()
        {
            if (Label != "long" && Label != "short" && Label != "skip") return "label '" + Label + "'";
            if (Probabilities == null) return "no probabilities";
            if (Risk == null) return "no risk block (a service older than the risk contract)";
            if (!(Risk.TickSize > 0) || !(Risk.StopDistance > 0) || !(Risk.TargetDistance > 0))
                return "risk block without positive tick_size, stop_distance and target_distance";
            return null;
        }
    }

    [DataContract]
    public sealed class UploadResult
    {
        [DataMember(Name = "symbol")] public string Symbol { get; set; }
        [DataMember(Name = "timeframe")] public string Timeframe { get; set; }
        [DataMember(Name = "received")] public int Received { get; set; }
        [DataMember(Name = "inserted")] public int Inserted { get; set; }
        [DataMember(Name = "unchanged")] public int Unchanged { get; set; }
        [DataMember(Name = "conflicting")] public int Conflicting { get; set; }
        [DataMember(Name = "ingest_id")] public long IngestId { get; set; }
        [DataMember(Name = "first_bar")] public string FirstBar { get; set; }
        [DataMember(Name = "last_bar")] public string LastBar { get; set; }
    }

    [DataContract]
    public sealed class ErrorItem
    {
        [DataMember(Name = "path")] public string Path { get; set; }
        [DataMember(Name = "message")] public string Message { get; set; }

        public override string ToString() { return Path + ": " + Message; }
    }

    /// <summary>The parts of <c>details</c> the contract names (others stay in the raw body).</summary>
    [DataContract]
    public sealed class ErrorDetails
    {
        [DataMember(Name = "errors")] public List<ErrorItem> Errors { get; set; }
        [DataMember(Name = "minimum_bars")] public int? MinimumBars { get; set; }
        [DataMember(Name = "missing_bars")] public int? MissingBars { get; set; }
        [DataMember(Name = "timeout_ms")] public double? TimeoutMs { get; set; }
    }

    /// <summary>Every error answer: <c>{error, code, details}</c>.</summary>
    [DataContract]
    public sealed class ErrorBody
    {
        [DataMember(Name = "error")] public string Error { get; set; }
        [DataMember(Name = "code")] public int Code { get; set; }
        [DataMember(Name = "details")] public ErrorDetails Details { get; set; }
    }

    /// <summary>The service refused the request, or no answer came before the deadline.
    /// <see cref="Status"/> 0: no HTTP answer (refused connection, reset, deadline).</summary>
    public sealed class SmcServiceException : Exception
    {
        public int Status { get; }
        public ErrorBody Body { get; }
        public string RawBody { get; }
        public int Attempts { get; }
        public bool DeadlineExceeded { get; }

        public SmcServiceException(string message, int status, ErrorBody body, string rawBody, int attempts,
                                   bool deadlineExceeded, Exception inner = null)
            : base(message, inner)
        {
            Status = status;
            Body = body;
            RawBody = rawBody;
            Attempts = attempts;
            DeadlineExceeded = deadlineExceeded;
        }

        /// <summary>True when another attempt could succeed: no answer, 5xx or 429.</summary>
        public bool Retryable { get { return SmcClient.IsRetryable(Status); } }
    }

    // ---------------------------------------------------------------- JSON

    /// <summary>The framework's DataContractJsonSerializer, one per type, with plain objects for dictionaries.</summary>
    public static class Json
    {
        private static readonly DataContractJsonSerializerSettings Settings =
            new DataContractJsonSerializerSettings { UseSimpleDictionaryFormat = true };
        private static readonly Dictionary<Type, DataContractJsonSerializer> Serializers =
            new Dictionary<Type, DataContractJsonSerializer>();

        private static DataContractJsonSerializer For(Type type)
        {
            lock (Serializers)
            {
                DataContractJsonSerializer serializer;
                if (!Serializers.TryGetValue(type, out serializer))
                {
                    serializer = new DataContractJsonSerializer(type, Settings);
                    Serializers[type] = serializer;
                }
                return serializer;
            }
        }

        public static byte[] Serialize<T>(T value)
        {
            using (var stream = new MemoryStream())
            {
                For(typeof(T)).WriteObject(stream, value);
                return stream.ToArray();
            }
        }

        public static string ToText<T>(T value)
        {
            return Encoding.UTF8.GetString(Serialize(value));
        }

        /// <summary>The typed value, or a SerializationException when the text is not that JSON.</summary>
        public static T Parse<T>(string text)
        {
            using (var stream = new MemoryStream(Encoding.UTF8.GetBytes(text ?? "")))
                return (T)For(typeof(T)).ReadObject(stream);
        }

        /// <summary>False, with the reason, when the text is not JSON of that shape (empty, HTML, a wrong type).</summary>
        public static bool TryParse<T>(string text, out T value, out string problem) where T : class
        {
            try
            {
                value = Parse<T>(text);
                problem = value == null ? "null" : null;
                return value != null;
            }
            catch (Exception error) when (!(error is OutOfMemoryException))
            {
                // SerializationException on .NET; Mono may wrap a FormatException in a TargetInvocationException
                value = null;
                problem = (error.InnerException ?? error).Message;
                return false;
            }
        }
    }

    // ---------------------------------------------------------------- the client

    public sealed class SmcClient
    {
        /// <summary>Waits before the second and the third attempt (seed 000 §6.2).</summary>
        public static readonly TimeSpan[] RetryWaits = { TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(200) };

        /// <summary>The default deadline of one /predict call, all attempts and waits included.</summary>
        public static readonly TimeSpan DefaultDeadline = TimeSpan.FromMilliseconds(300);

        // One per process (per loaded NinjaScript assembly), configured here and nowhere else. Its
        // Timeout stays infinite: a deadline is per call, through the CancellationToken.
        private static readonly HttpClient Http = CreateHttp();

        private readonly Uri predictUri;
        private readonly Uri barsUri;
        private readonly string apiKey;

        public SmcClient(string baseUrl, string apiKey)
        {
            Uri root;
            if (string.IsNullOrWhiteSpace(baseUrl) || !Uri.TryCreate(baseUrl.Trim().TrimEnd('/') + "/", UriKind.Absolute, out root)
                || (root.Scheme != Uri.UriSchemeHttp && root.Scheme != Uri.UriSchemeHttps))
                throw new ArgumentException("the service URL must be http(s)://host:port, got '" + baseUrl + "'", "baseUrl");
            predictUri = new Uri(root, "predict");
            barsUri = new Uri(root, "bars");
            this.apiKey = apiKey ?? "";
            // Per host, not per HttpClient: small POSTs must not wait for Nagle's algorithm and a
            // delayed ACK (up to 200 ms on Windows), nor for a 100-Continue that never comes.
            ServicePoint point = ServicePointManager.FindServicePoint(root);
            point.UseNagleAlgorithm = false;
            point.Expect100Continue = false;
        }

        /// <summary>The HttpClient every SmcClient shares (tests check it is never reconfigured).</summary>
        public static HttpClient SharedHttp { get { return Http; } }

        private static HttpClient CreateHttp()
        {
            var handler = new HttpClientHandler { UseProxy = false, AllowAutoRedirect = false, UseCookies = false };
            return new HttpClient(handler, true) { Timeout = System.Threading.Timeout.InfiniteTimeSpan };
        }

        public static bool IsRetryable(int status)
        {
            return status == 0 || status == 429 || status >= 500;
        }

        /// <summary>POST /predict; the answer, or SmcServiceException within <paramref name="deadline"/>.</summary>
        public async Task<PredictAnswer> PredictAsync(PredictRequest request, TimeSpan deadline,
                                                      CancellationToken cancel = default(CancellationToken))
        {
            PredictAnswer answer = await PostAsync<PredictRequest, PredictAnswer>(predictUri, request, deadline, cancel)
                                             .ConfigureAwait(false);
            string problem = answer.Problem();
            if (problem != null)
                throw new SmcServiceException("incomplete answer: " + problem, 200, null, null, 1, false);
            return answer;
        }

        /// <summary>POST /bars: the counts of inserted, unchanged and conflicting bars (idempotent).</summary>
        public Task<UploadResult> UploadBarsAsync(BarsUpload upload, TimeSpan deadline,
                                                  CancellationToken cancel = default(CancellationToken))
        {
            return PostAsync<BarsUpload, UploadResult>(barsUri, upload, deadline, cancel);
        }

        private async Task<TAnswer> PostAsync<TRequest, TAnswer>(Uri uri, TRequest body, TimeSpan deadline,
                                                                 CancellationToken cancel) where TAnswer : class
        {
            byte[] payload = Json.Serialize(body);
            using (var limit = CancellationTokenSource.CreateLinkedTokenSource(cancel))
            {
                limit.CancelAfter(deadline);
                SmcServiceException last = null;
                int attempts = 0;
                try
                {
                    while (true)
                    {
                        if (attempts > 0)
                            await Task.Delay(RetryWaits[attempts - 1], limit.Token).ConfigureAwait(false);
                        attempts++;
                        Outcome<TAnswer> outcome = await AttemptAsync<TAnswer>(uri, payload, attempts, limit.Token)
                                                             .ConfigureAwait(false);
                        if (outcome.Error == null)
                            return outcome.Value;
                        last = outcome.Error;
                        if (!last.Retryable || attempts > RetryWaits.Length)
                            throw last;
                    }
                }
                catch (OperationCanceledException error) when (limit.IsCancellationRequested)
                {
                    bool ours = !cancel.IsCancellationRequested;
                    string why = ours ? "no answer within the deadline of " + deadline.TotalMilliseconds.ToString(CultureInfo.InvariantCulture)
                                        + " ms" : "cancelled";
                    throw new SmcServiceException(why + " (" + attempts + " attempt(s)" + (last != null ? "; last: " + last.Message : "")
                                                  + ")", last != null ? last.Status : 0, last != null ? last.Body : null,
                                                  last != null ? last.RawBody : null, attempts, ours, error);
                }
            }
        }

        /// <summary>One attempt: the typed answer, or the error to retry on or raise.</summary>
        private async Task<Outcome<TAnswer>> AttemptAsync<TAnswer>(Uri target, byte[] content, int number,
                                                                   CancellationToken token) where TAnswer : class
        {
            HttpResponseMessage response;
            using (var message = new HttpRequestMessage(HttpMethod.Post, target))
            {
                message.Headers.ExpectContinue = false;
                message.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
                message.Headers.TryAddWithoutValidation("X-API-Key", apiKey);
                message.Content = new ByteArrayContent(content);
                message.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json") { CharSet = "utf-8" };
                try
                {
                    response = await Http.SendAsync(message, HttpCompletionOption.ResponseContentRead, token)
                                         .ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (token.IsCancellationRequested)
                {
                    throw;  // the deadline: PostAsync reports it
                }
                catch (Exception error) when (error is HttpRequestException || error is IOException
                                              || error is WebException || error is OperationCanceledException)
                {
                    // refused, reset, name or TLS failure: no answer, retried
                    return Outcome<TAnswer>.Failed(new SmcServiceException("no answer: " + Innermost(error), 0, null, null,
                                                                           number, false, error));
                }
            }
            using (response)
            {
                string text = await response.Content.ReadAsStringAsync().ConfigureAwait(false);
                int status = (int)response.StatusCode;
                string problem;
                if (status == 200)
                {
                    TAnswer value;
                    return Json.TryParse(text, out value, out problem)
                        ? Outcome<TAnswer>.Answered(value)
                        : Outcome<TAnswer>.Failed(new SmcServiceException("unreadable answer: " + problem, 200, null, text,
                                                                          number, false));
                }
                ErrorBody parsed;
                if (!Json.TryParse(text, out parsed, out problem))
                    parsed = null;  // not the contract's error shape (a proxy's page): the raw text is kept
                string reason = parsed != null && parsed.Error != null ? parsed.Error : response.ReasonPhrase;
                string where = parsed != null && parsed.Details != null && parsed.Details.Errors != null
                               && parsed.Details.Errors.Count > 0 ? " (" + string.Join("; ", parsed.Details.Errors) + ")" : "";
                return Outcome<TAnswer>.Failed(new SmcServiceException(status + " " + reason + where, status, parsed, text,
                                                                       number, false));
            }
        }

        private static string Innermost(Exception error)
        {
            while (error.InnerException != null)
                error = error.InnerException;
            return error.GetType().Name + ": " + error.Message;
        }

        private struct Outcome<T> where T : class
        {
            public T Value;
            public SmcServiceException Error;

            public static Outcome<T> Answered(T value) { return new Outcome<T> { Value = value }; }
            public static Outcome<T> Failed(SmcServiceException error) { return new Outcome<T> { Error = error }; }
        }
    }

    // ---------------------------------------------------------------- bar times

    public static class SmcTime
    {
        public static string Format(DateTime utc)
        {
            if (utc.Kind != DateTimeKind.Utc)
                throw new ArgumentException("a bar time must be UTC (DateTimeKind.Utc), got " + utc.Kind, "utc");
            return utc.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", CultureInfo.InvariantCulture);
        }

        /// <summary>
        /// A bar time shown in <paramref name="zone"/> (NinjaTrader's configured time zone,
        /// Tools → Options → General) as UTC. In the hour a fall-back repeats, the wall clock is
        /// ambiguous: the earliest UTC instant after <paramref name="previousUtc"/> (the bar before,
        /// already converted) is taken, so a series keeps its order through the repeat; without a
        /// previous bar, the first occurrence. A wall time skipped by a spring-forward does not exist
        /// and is refused.
        /// </summary>
        public static DateTime ToUtc(DateTime wall, TimeZoneInfo zone, DateTime? previousUtc = null)
        {
            if (zone == null)
                throw new ArgumentNullException("zone");
            if (wall.Kind == DateTimeKind.Utc)
                return wall;
            DateTime local = DateTime.SpecifyKind(wall, DateTimeKind.Unspecified);
            if (zone.IsInvalidTime(local))
                throw new ArgumentException(local.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture)
                                            + " does not exist in " + zone.Id + " (skipped by daylight saving)", "wall");
            if (!zone.IsAmbiguousTime(local))
                return TimeZoneInfo.ConvertTimeToUtc(local, zone);
            TimeSpan[] offsets = zone.GetAmbiguousTimeOffsets(local);
            var candidates = new List<DateTime>(offsets.Length);
            foreach (TimeSpan offset in offsets)
                candidates.Add(DateTime.SpecifyKind(local - offset, DateTimeKind.Utc));
            candidates.Sort();
            if (previousUtc.HasValue)
                foreach (DateTime candidate in candidates)
                    if (candidate > previousUtc.Value)
                        return candidate;
            return candidates[0];
        }

        /// <summary>The service's name of a minute or second bar series ("1m", "30s"); null for other kinds.</summary>
        public static string Timeframe(bool minutes, bool seconds, int value)
        {
            if (value < 1) return null;
            if (minutes) return value.ToString(CultureInfo.InvariantCulture) + "m";
            if (seconds) return value.ToString(CultureInfo.InvariantCulture) + "s";
            return null;
        }
    }

    // ---------------------------------------------------------------- the trading policy

    public enum TradeAction
    {
        /// <summary>skip, or confidence below the entry threshold: nothing is entered, an open position keeps its orders.</summary>
        None,
        /// <summary>from flat.</summary>
        Enter,
        /// <summary>close the position, then enter the other way.</summary>
        Reverse,
        /// <summary>already positioned that way: no pyramiding.</summary>
        Hold
    }

    public sealed class PolicySettings
    {
        public double FullThreshold = 0.70;
        public double HalfThreshold = 0.55;
        /// <summary>Contracts at full size; half size is half of it (at least one).</summary>
        public int Contracts = 2;

        public void Check()
        {
            if (!(0 < HalfThreshold && HalfThreshold <= FullThreshold && FullThreshold <= 1))
                throw new ArgumentException("thresholds must satisfy 0 < half (" + HalfThreshold + ") <= full ("
                                            + FullThreshold + ") <= 1");
            if (Contracts < 1)
                throw new ArgumentException("contracts must be >= 1, got " + Contracts);
        }
    }

    public sealed class Decision
    {
        public TradeAction Action;
        /// <summary>+1 long, -1 short, 0 for None.</summary>
        public int Direction;
        public int Contracts;
        public double SizeFraction;
        /// <summary>Points from the entry to the stop and to the target (the risk block's); 0 when nothing is entered.</summary>
        public double StopDistance;
        public double TargetDistance;
        public string Label;
        public double Confidence;

        public override string ToString()
        {
            return string.Format(CultureInfo.InvariantCulture, "{0} {1} x{2} ({3} {4:0.###}, stop {5}, target {6})",
                                 Action, Direction > 0 ? "long" : Direction < 0 ? "short" : "-", Contracts, Label,
                                 Confidence, StopDistance, TargetDistance);
        }
    }

    /// <summary>smc_core/policy.py, line for line: what the backtest behind the gates trades.</summary>
    public static class SmcPolicy
    {
        private static readonly string[] Labels = { "long", "short", "skip" };

        /// <summary>1.0 at full confidence, 0.5 in the middle tier, 0.0 below the entry threshold.</summary>
        public static double SizeFraction(double confidence, double halfThreshold, double fullThreshold)
        {
            if (confidence >= fullThreshold)
                return 1.0;
            return confidence >= halfThreshold ? 0.5 : 0.0;
        }

        /// <summary>Contracts for a confidence: Python's round() (to even) of contracts × fraction, at least one.</summary>
        public static int ContractsFor(double confidence, PolicySettings settings)
        {
            double fraction = SizeFraction(confidence, settings.HalfThreshold, settings.FullThreshold);
            return fraction == 0 ? 0 : Math.Max(1, (int)Math.Round(settings.Contracts * fraction, MidpointRounding.ToEven));
        }

        /// <summary>The settings an answer is traded with: its own threshold (the service's) as the half
        /// tier, full size from max(threshold, <paramref name="fullThreshold"/>), as smc replay does.</summary>
        public static PolicySettings For(PredictAnswer answer, int contracts, double fallbackThreshold,
                                         double fullThreshold = 0.70)
        {
            double half = answer.Threshold ?? fallbackThreshold;
            var settings = new PolicySettings { HalfThreshold = half, FullThreshold = Math.Max(half, fullThreshold),
                                                Contracts = contracts };
            settings.Check();
            return settings;
        }

        /// <summary>The action for one answer, given the signed number of contracts held.</summary>
        public static Decision Decide(Probabilities probabilities, int position, Risk risk, PolicySettings settings)
        {
            double[] p = { probabilities.Long, probabilities.Short, probabilities.Skip };
            int best = 0;                                    // numpy's argmax: the first of equal maxima
            for (int i = 1; i < p.Length; i++)
                if (p[i] > p[best])
                    best = i;
            double confidence = p[best];
            double fraction = SizeFraction(confidence, settings.HalfThreshold, settings.FullThreshold);
            if (best == 2 || fraction == 0)
                return new Decision { Action = TradeAction.None, SizeFraction = best != 2 ? fraction : 0.0,
                                      Label = Labels[best], Confidence = confidence };
            int direction = best == 0 ? 1 : -1;
            if (position * direction > 0)
                return new Decision { Action = TradeAction.Hold, Direction = direction, SizeFraction = fraction,
                                      Label = Labels[best], Confidence = confidence };
            return new Decision
            {
                Action = position != 0 ? TradeAction.Reverse : TradeAction.Enter, Direction = direction,
                Contracts = ContractsFor(confidence, settings), SizeFraction = fraction,
                StopDistance = risk.StopDistance, TargetDistance = risk.TargetDistance,
                Label = Labels[best], Confidence = confidence
            };
        }

        /// <summary>Whole ticks of a distance in points (the risk block's distances already are).</summary>
        public static int Ticks(double distance, double tickSize)
        {
            return Math.Max(1, (int)Math.Round(distance / tickSize, MidpointRounding.AwayFromZero));
        }
    }
}
